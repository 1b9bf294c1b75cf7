"""Optimizers from the conf/optim presets, the learning rate each schedule gives at known steps,
and the registries: one name, one builder, one schema, one preset."""
from __future__ import annotations

import inspect
import math
from typing import get_args

import pytest
import torch
import yaml
from torch import nn

from conftest import REPO, noise_image
from recipe.train.models import Classifier, Head, param_groups
from recipe.train.optim import (
    LR_SCALING,
    OPTIMIZERS,
    SCHEDULES,
    current_lrs,
    lr_scale,
    make_optimizer,
    make_schedule,
    sgdr_factor,
)
from recipe.train.schema import OptimConfig, ScheduleConfig

torch.set_num_threads(1)

CLASSES = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
           "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad, "adadelta": torch.optim.Adadelta}


def tiny_classifier() -> Classifier:
    """A real Classifier with a conv, a BatchNorm and a head: three groups, biases, norm params."""
    conv = nn.Conv2d(3, 4, 3, padding=1)
    bn = nn.BatchNorm2d(4)
    body = nn.Sequential(conv, nn.ReLU(), bn)  # a conv bias right before BN would get no gradient
    head = Head(4, 2, pool="avg", dropout=0.0)
    return Classifier(body, head, [[conv], [bn], [head]], ["early", "late", "head"], [0.5] * 3, [0.5] * 3)


def optim_cfg(name: str) -> dict:
    return yaml.safe_load((REPO / "conf" / "optim" / f"{name}.yaml").read_text())


def optimizer_from_conf(model: Classifier, cfg: dict, lrs: list[float]) -> torch.optim.Optimizer:
    """As recipe.train.learner.Common.optimizer does."""
    cfg = {k: v for k, v in cfg.items() if k not in ("lr_scaling", "lr_reference_batch")}  # Common applies them
    groups = param_groups(model, lrs, weight_decay=cfg.pop("weight_decay"), bn_weight_decay=cfg.pop("bn_weight_decay"),
                          l1=cfg.pop("l1", 0.0))
    return make_optimizer(groups, **cfg)


def schedule_cfg(name: str) -> dict:
    return yaml.safe_load((REPO / "conf" / "schedule" / f"{name}.yaml").read_text())


def sgd(lrs=(1.0,), momentum=0.0) -> torch.optim.SGD:
    groups = [{"params": [nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0], momentum=momentum)


# --- optimizers -----------------------------------------------------------------------------

@pytest.mark.parametrize("name,nesterov", [("sgd", False), ("sgd", True), ("adam", False), ("adamw", False),
                                           ("rmsprop", False), ("adagrad", False), ("adadelta", False)])
def test_make_optimizer_from_conf(name, nesterov):
    torch.manual_seed(0)
    cfg = optim_cfg(name)
    assert cfg["name"] == name
    if name == "sgd":
        cfg["nesterov"] = nesterov
    m = tiny_classifier()
    lrs = [1e-3, 1e-2, 1e-1]
    opt = optimizer_from_conf(m, cfg, lrs)
    assert type(opt) is CLASSES[name]
    # the per-group rates and weight decay survive (no optimizer-wide lr overrides them)
    assert [(g["name"], g["lr"]) for g in opt.param_groups] == [
        ("early", 1e-3), ("early.no_decay", 1e-3), ("late.no_decay", 1e-2), ("head", 1e-1), ("head.no_decay", 1e-1)]
    assert opt.param_groups[0]["weight_decay"] == cfg["weight_decay"]
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups if g["name"].endswith("no_decay"))
    if name == "sgd":
        assert opt.defaults["momentum"] == cfg["momentum"] and opt.defaults["nesterov"] == nesterov
    if name in ("adam", "adamw"):
        assert opt.defaults["betas"] == tuple(cfg["betas"])
    before = [p.detach().clone() for p in m.parameters()]
    loss = nn.functional.cross_entropy(m(torch.rand(4, 3, 6, 6)), torch.tensor([0, 1, 0, 1]))
    opt.zero_grad()
    loss.backward()
    opt.step()
    changed = [not torch.equal(b, p) for b, p in zip(before, m.parameters())]
    assert all(changed), f"{name}: a parameter did not move after one step"


def test_make_optimizer_unknown_name():
    with pytest.raises(ValueError, match="lion"):
        make_optimizer([{"params": [nn.Parameter(torch.zeros(1))], "lr": 0.1}], name="lion")


def test_make_optimizer_does_not_mutate_conf_sections():
    cfg = optim_cfg("adamw")
    kept = dict(cfg)
    m = tiny_classifier()
    optimizer_from_conf(m, cfg, [1e-3] * len(m.groups))
    assert cfg == kept


# --- SGDR -----------------------------------------------------------------------------------

def run_lrs(opt, sched, steps: int) -> list[list[float]]:
    """The rates each batch trains at: read before the schedule moves."""
    out = []
    for _ in range(steps):
        out.append(current_lrs(opt))
        opt.step()
        sched.step_batch()
    return out


def test_sgdr_lrs_at_known_steps():
    opt = sgd([1.0])
    sched = make_schedule(opt, name="sgdr", epochs=7, steps_per_epoch=10, cycle_len=1, cycle_mult=2, eta_min=0.0)
    lrs = [r[0] for r in run_lrs(opt, sched, 71)]
    assert lrs[0] == pytest.approx(1.0)
    assert lrs[5] == pytest.approx(0.5)  # middle of the first cycle (10 batches)
    assert lrs[9] == pytest.approx((1 + math.cos(math.pi * 9 / 10)) / 2)
    assert lrs[10] == pytest.approx(1.0)  # restart
    assert lrs[20] == pytest.approx(0.5)  # middle of the second cycle (20 batches)
    assert lrs[30] == pytest.approx(1.0)  # restart; third cycle has 40 batches
    assert lrs[50] == pytest.approx(0.5)
    assert lrs[70] == pytest.approx(1.0)
    # strictly falling inside a cycle
    assert all(a > b for a, b in zip(lrs[10:29], lrs[11:30]))


def test_sgdr_keeps_group_ratios_and_eta_min_is_a_fraction():
    opt = sgd([1.0, 0.1])
    sched = make_schedule(opt, name="sgdr", epochs=3, steps_per_epoch=10, cycle_len=1, cycle_mult=2, eta_min=0.1)
    rows = run_lrs(opt, sched, 30)
    for a, b in rows:
        assert b == pytest.approx(a * 0.1)
    assert rows[0] == pytest.approx([1.0, 0.1])
    assert rows[5] == pytest.approx([0.55, 0.055])  # 0.1 + 0.9 * 0.5
    assert min(r[0] for r in rows) >= 0.1 - 1e-12
    assert min(r[1] for r in rows) >= 0.01 - 1e-12


def test_sgdr_factor_cycle_mult_one():
    f = sgdr_factor(cycle_len=4, cycle_mult=1, eta_min=0.0)
    assert [f(t) for t in (0, 2, 4, 6, 8)] == pytest.approx([1.0, 0.5, 1.0, 0.5, 1.0])


def test_cosine_anneals_once_to_eta_min():
    opt = sgd([2.0])
    sched = make_schedule(opt, name="cosine", epochs=2, steps_per_epoch=5, eta_min=0.0)
    lrs = [r[0] for r in run_lrs(opt, sched, 10)]
    assert lrs[0] == pytest.approx(2.0)
    assert lrs[5] == pytest.approx(1.0)
    assert lrs[9] == pytest.approx(2.0 * (1 + math.cos(math.pi * 9 / 10)) / 2)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_sgdr_schedule_state_round_trip():
    """A resumed run continues the schedule where it stopped."""
    opt = sgd([1.0])
    sched = make_schedule(opt, name="sgdr", epochs=4, steps_per_epoch=5, cycle_len=1, cycle_mult=2, eta_min=0.0)
    full = [r[0] for r in run_lrs(opt, sched, 20)]
    opt = sgd([1.0])
    sched = make_schedule(opt, name="sgdr", epochs=4, steps_per_epoch=5, cycle_len=1, cycle_mult=2, eta_min=0.0)
    first = [r[0] for r in run_lrs(opt, sched, 8)]
    opt_state, sched_state = opt.state_dict(), sched.state_dict()
    opt2 = sgd([1.0])
    sched2 = make_schedule(opt2, name="sgdr", epochs=4, steps_per_epoch=5, cycle_len=1, cycle_mult=2, eta_min=0.0)
    opt2.load_state_dict(opt_state)
    sched2.load_state_dict(sched_state)
    rest = [r[0] for r in run_lrs(opt2, sched2, 12)]
    assert first + rest == pytest.approx(full)


# --- one-cycle ------------------------------------------------------------------------------

def onecycle(opt, epochs, steps_per_epoch):
    return make_schedule(opt, epochs=epochs, steps_per_epoch=steps_per_epoch, **schedule_cfg("onecycle"))


def test_onecycle_rises_to_max_then_ends_far_below():
    opt = sgd([1.0, 0.01], momentum=0.9)
    sched = onecycle(opt, 4, 25)
    rows = run_lrs(opt, sched, 100)
    top = [r[0] for r in rows]
    peak = max(range(100), key=lambda i: top[i])
    assert top[0] == pytest.approx(1.0 / 25)
    assert top[peak] == pytest.approx(1.0, rel=1e-3)
    assert 20 <= peak <= 30  # pct_start 0.25
    assert all(a <= b + 1e-12 for a, b in zip(top[:peak], top[1:peak + 1]))
    assert all(a >= b - 1e-12 for a, b in zip(top[peak:], top[peak + 1:]))
    assert top[-1] < 1.0 / 1000
    assert all(r[1] == pytest.approx(r[0] * 0.01) for r in rows)
    # momentum moves against the rate
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.95, abs=1e-3)


def test_onecycle_tiny_total_does_not_raise():
    opt = sgd([1.0], momentum=0.9)
    sched = onecycle(opt, 1, 2)
    lrs = [r[0] for r in run_lrs(opt, sched, 2)]
    assert all(math.isfinite(x) and x > 0 for x in lrs)
    before = current_lrs(opt)
    sched.step_epoch(0.5)  # per batch: an epoch step is a no-op
    assert current_lrs(opt) == before


def test_onecycle_zero_steps_does_not_raise():
    opt = sgd([1.0], momentum=0.9)
    onecycle(opt, 0, 0)


def test_onecycle_leaves_momentum_alone_without_momentum():
    """Plain SGD (momentum 0) must not get momentum from the cycle; Adagrad has none to cycle."""
    opt = sgd([1.0], momentum=0.0)
    sched = onecycle(opt, 1, 20)
    run_lrs(opt, sched, 10)
    assert opt.param_groups[0]["momentum"] == 0.0
    p = nn.Parameter(torch.zeros(1))
    ada = torch.optim.Adagrad([{"params": [p], "lr": 0.1}])
    sched = onecycle(ada, 1, 20)
    run_lrs(ada, sched, 5)


def test_onecycle_with_adam_cycles_beta1():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([{"params": [p], "lr": 0.1}], betas=(0.9, 0.99))
    sched = onecycle(opt, 1, 40)
    run_lrs(opt, sched, 10)
    beta1 = opt.param_groups[0]["betas"][0]
    assert 0.85 <= beta1 < 0.95


# --- per-epoch schedules ----------------------------------------------------------------------

def epoch_lrs(name: str, epochs: int, losses=None, **cfg) -> list[float]:
    """The rate during each epoch, with 3 batches per epoch and the batch steps in between."""
    opt = sgd([1.0])
    sched = make_schedule(opt, name=name, epochs=epochs, steps_per_epoch=3, **cfg)
    out = []
    for e in range(epochs):
        seen = set()
        for _ in range(3):
            seen.add(current_lrs(opt)[0])
            opt.step()
            sched.step_batch()
        assert len(seen) == 1, f"{name}: the rate moved within an epoch"
        out.append(seen.pop())
        sched.step_epoch(losses[e] if losses else 1.0)
    return out


def test_step_schedule():
    assert epoch_lrs("step", 6, step_size=2, gamma=0.1) == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_multistep_schedule():
    lrs = epoch_lrs("multistep", 8, milestones=[3, 6], gamma=0.1)
    assert lrs == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01])


def test_exponential_schedule():
    assert epoch_lrs("exponential", 4, gamma=0.8) == pytest.approx([1, 0.8, 0.64, 0.512])


def test_plateau_reduces_after_patience_epochs_without_improvement():
    # epoch 0 best; epochs 1 and 2 no better: the second bad epoch exceeds patience 1
    lrs = epoch_lrs("plateau", 5, losses=[1.0, 1.0, 1.0, 0.5, 0.4], factor=0.1, patience=1)
    assert lrs == pytest.approx([1, 1, 1, 0.1, 0.1])


def test_plateau_keeps_rate_while_improving():
    lrs = epoch_lrs("plateau", 5, losses=[1.0, 0.9, 0.8, 0.7, 0.6], factor=0.1, patience=1)
    assert lrs == pytest.approx([1] * 5)


def test_constant_never_changes():
    opt = sgd([0.3, 0.03])
    sched = make_schedule(opt, name="constant", epochs=3, steps_per_epoch=4)
    for e in range(3):
        for _ in range(4):
            assert current_lrs(opt) == [0.3, 0.03]
            sched.step_batch()
        sched.step_epoch(10.0 * e)
    assert current_lrs(opt) == [0.3, 0.03]
    assert sched.state_dict() == {}
    sched.load_state_dict({})


def test_unknown_schedule():
    with pytest.raises(ValueError, match="warmup"):
        make_schedule(sgd(), name="warmup", epochs=1, steps_per_epoch=1)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_schedule_preset_builds_and_steps(name):
    cfg = schedule_cfg(name)
    opt = sgd([1.0, 0.1], momentum=0.9)
    sched = make_schedule(opt, epochs=2, steps_per_epoch=3, **cfg)
    for _ in range(2):
        for _ in range(3):
            opt.step()
            sched.step_batch()
        sched.step_epoch(1.0)
    a, b = current_lrs(opt)
    assert b == pytest.approx(a * 0.1)
    assert isinstance(sched.state_dict(), dict)


# --- the registries -------------------------------------------------------------------------

# per group, the tag, or applied by recipe.train.learner.Common (lr_scaling)
COMMON_OPTIM_KEYS = {"name", "weight_decay", "bn_weight_decay", "lr_scaling", "lr_reference_batch", "l1"}


def schemas(union) -> dict[str, type]:
    """Tag -> schema class of a discriminated union (``Annotated[Union[...], Field(discriminator="name")]``)."""
    out = {}
    for cls in get_args(get_args(union)[0]):
        for tag in get_args(cls.model_fields["name"].annotation):
            out[tag] = cls
    return out


def presets(group: str) -> set[str]:
    return {f.stem for f in (REPO / "conf" / group).glob("*.yaml")}


def own_keys(builder) -> set[str]:
    """The config keys a builder takes: its keyword-only parameters."""
    return {n for n, p in inspect.signature(builder).parameters.items() if p.kind is p.KEYWORD_ONLY}


@pytest.mark.parametrize("registry,union,group", [(OPTIMIZERS, OptimConfig, "optim"),
                                                  (SCHEDULES, ScheduleConfig, "schedule")], ids=["optim", "schedule"])
def test_every_name_has_a_builder_a_schema_and_a_preset(registry, union, group):
    assert set(registry) == set(schemas(union)), "recipe.train.optim registry vs recipe/train/schema.py union tags"
    assert set(registry) == presets(group), f"recipe.train.optim registry vs conf/{group}/*.yaml"
    for name in registry:
        assert yaml.safe_load((REPO / "conf" / group / f"{name}.yaml").read_text())["name"] == name


def test_each_optimizer_builder_takes_exactly_its_schemas_keys():
    for name, cls in schemas(OptimConfig).items():
        assert own_keys(OPTIMIZERS[name]) == set(cls.model_fields) - COMMON_OPTIM_KEYS, name


def test_each_schedule_builder_takes_exactly_its_schemas_keys():
    for name, cls in schemas(ScheduleConfig).items():
        assert own_keys(SCHEDULES[name]) == set(cls.model_fields) - {"name"}, name


def test_every_optimizer_preset_builds_through_its_schema():
    """What the stages do: the preset, validated, into Common.optimizer's arguments."""
    m = tiny_classifier()
    for name in sorted(OPTIMIZERS):
        shared = yaml.safe_load((REPO / "conf" / "config.yaml").read_text())["optim"]  # keys every preset gets
        cfg = schemas(OptimConfig)[name].model_validate({**optim_cfg(name), **shared}).model_dump()
        assert type(optimizer_from_conf(m, cfg, [1e-3] * len(m.groups))) is CLASSES[name]


# --- the rates and the batch size (optim.lr_scaling) ------------------------------------------

def scaled_common(params, rule: str, batch_size: int, reference: int = 32, **train):
    """The shared sections a training stage builds from params.yaml, with lr_scaling set."""
    import copy

    from recipe.core.config import StageParams
    from stages._training import common_config

    p = copy.deepcopy(params)
    p["optim"] = {**p["optim"], "lr_scaling": rule, "lr_reference_batch": reference}
    p["train"] = {**p["train"], "batch_size": batch_size, **train}
    return common_config(StageParams("test", ["seed", "train", "model", "optim", "augment"], p))


@pytest.mark.parametrize("rule,batch,reference,factor", [
    ("none", 64, 32, 1.0), ("linear", 64, 32, 2.0), ("linear", 16, 32, 0.5), ("sqrt", 64, 32, math.sqrt(2)),
    ("sqrt", 128, 32, 2.0), ("linear", 32, 32, 1.0)])
def test_lr_scale_is_the_batch_ratio_its_square_root_or_one(rule, batch, reference, factor):
    assert lr_scale(rule, batch_size=batch, reference_batch=reference) == pytest.approx(factor)


def test_lr_scaling_names_are_the_schemas():
    from recipe.train.schema import _Optim

    assert set(LR_SCALING) == set(get_args(_Optim.model_fields["lr_scaling"].annotation))
    with pytest.raises(ValueError, match="cubic"):
        lr_scale("cubic", batch_size=64, reference_batch=32)


@pytest.mark.parametrize("rule,factor", [("none", 1.0), ("linear", 2.0), ("sqrt", math.sqrt(2))])
def test_every_rate_a_stage_builds_with_is_scaled_once(params, rule, factor):
    """Common.optimizer, which train_head, finetune and resize build every optimizer with: at
    twice the reference batch every layer group's rate is the factor times the configured one,
    and no lr_scaling key reaches torch's optimizer."""
    m = tiny_classifier()
    lrs = [1e-4, 3e-4, 1e-3]
    for optim in ("adamw", "sgd"):
        shared = yaml.safe_load((REPO / "conf" / "config.yaml").read_text())["optim"]  # as -S optim=... composes
        p = {**params, "optim": {**optim_cfg(optim), **shared}}
        common = scaled_common(p, rule, batch_size=64)
        assert common.lr_scale() == pytest.approx(factor)
        opt = common.optimizer(m, lrs)
        want = {n: lr * factor for n, lr in zip(m.group_names, lrs)}
        assert {g["name"]: g["lr"] for g in opt.param_groups} == pytest.approx(
            {g["name"]: want[g["name"].removesuffix(".no_decay")] for g in opt.param_groups})
        assert not {"lr_scaling", "lr_reference_batch"} & set(opt.defaults)
    plain = scaled_common(params, rule, batch_size=32).optimizer(m, lrs)  # at the reference batch: as configured
    assert [g["lr"] for g in plain.param_groups] == pytest.approx([1e-4, 1e-4, 3e-4, 1e-3, 1e-3])


def test_finetune_trains_at_the_scaled_rates_and_says_so(tmp_path, params):
    """The stage itself, on 12 tiny images: linear scaling at twice the reference batch doubles
    every rate finetune trains at (history.csv's lr, the head group's, under a constant schedule)."""
    import copy

    import pandas as pd

    from recipe.core.config import load_section
    from recipe.train import finetune
    from recipe.train.schema import FinetuneConfig, LrFindConfig
    from recipe.train.session import new_model, save_checkpoint

    rows = []
    for i in range(12):
        noise_image(tmp_path / "raw" / "files" / f"{i}.png", i, size=32)
        rows.append({"path": f"{i}.png", "label": "ab"[i % 2], "split": "train" if i < 8 else "valid"})
    pd.DataFrame(rows).to_csv(tmp_path / "split.csv", index=False)
    p = copy.deepcopy(params)
    p["model"] = {**p["model"], "name": "resnet18", "weights": None}
    p["finetune"] = {**p["finetune"], "epochs": 1, "lr": 0.01, "schedule": {"name": "constant"}, "snapshots": False}
    out = {}
    for rule in ("none", "linear"):
        common = scaled_common(p, rule, batch_size=8, reference=4, image_size=32, workers=1)
        torch.manual_seed(0)
        start = new_model(common.model, ["a", "b"], [0.5, 0.5])
        save_checkpoint(tmp_path / "head.pt", start, classes=["a", "b"], size=32, model_config=p["model"],
                        stage="train_head", epoch=1, channels=1)
        metrics = finetune.run(common, load_section("finetune", FinetuneConfig, p),
                               load_section("lr_find", LrFindConfig, p), split=tmp_path / "split.csv",
                               raw=tmp_path / "raw", checkpoint=tmp_path / "head.pt",
                               out=tmp_path / rule / "model.pt", history_csv=tmp_path / rule / "history.csv",
                               lr_find_dir=tmp_path / "lr")
        out[rule] = metrics, pd.read_csv(tmp_path / rule / "history.csv")
    (none, h_none), (linear, h_linear) = out["none"], out["linear"]
    assert none["lr_scale"] == 1.0 and linear["lr_scale"] == 2.0
    assert linear["lrs"] == none["lrs"] == none["lrs_used"]  # the configured rates, as given
    assert linear["lrs_used"] == pytest.approx([2 * x for x in none["lrs"]])
    assert h_none["lr"].iloc[-1] == pytest.approx(0.01) and h_linear["lr"].iloc[-1] == pytest.approx(0.02)


def test_the_range_test_sweep_is_not_scaled(params):
    """lr_find's sweep (start_lr..end_lr) is the same curve whatever lr_scaling says: it reads the
    optimizer's rates only as ratios (finetune's lr_mult), and the scaling comes after it."""
    from recipe.core.config import load_section
    from recipe.data.loader import Batches
    from recipe.train import lr_find
    from recipe.train.models import spread_lrs
    from recipe.train.schema import LrFindConfig

    cfg = load_section("lr_find", LrFindConfig, params).model_copy(update={"iterations": 20})
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 256, (32, 3, 8, 8), generator=gen, dtype=torch.uint8), torch.arange(32) % 2
    curves = {}
    for rule in ("none", "linear"):
        common = scaled_common(params, rule, batch_size=64)
        torch.manual_seed(0)
        m = tiny_classifier()
        train = Batches(x, y, batch_size=8, shuffle=True, seed=0, device=torch.device("cpu"))
        curves[rule] = lr_find.sweep(m, m, common, cfg, train, spread_lrs(1.0, 9, len(m.groups)), None,
                                     multi_label=False)["curve"]
    assert curves["none"]["lr"] == curves["linear"]["lr"]
    assert curves["none"]["lr"][0] == pytest.approx(cfg.start_lr)
    assert curves["none"]["loss"] == pytest.approx(curves["linear"]["loss"], rel=1e-6)


@pytest.mark.parametrize("change,expected", [
    ({"lr_scaling": "cubic"}, "optim.lr_scaling = 'cubic': Input should be 'none', 'linear' or 'sqrt'"),
    ({"lr_reference_batch": 0}, "optim.lr_reference_batch = 0: Input should be greater than 0")])
def test_a_bad_lr_scaling_is_a_schema_error_naming_the_key(params, change, expected):
    from recipe.core.config import validate
    from recipe.core.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        validate("optim", {**params["optim"], **change}, OptimConfig)
    assert expected in str(err.value)
