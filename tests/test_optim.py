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

from recipe.models import Classifier, Head, param_groups
from recipe.optim import OPTIMIZERS, SCHEDULES, current_lrs, make_optimizer, make_schedule, sgdr_factor
from recipe.schema import OptimConfig, ScheduleConfig

from conftest import REPO

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
    """As recipe.training.Common.optimizer does."""
    cfg = dict(cfg)
    groups = param_groups(model, lrs, weight_decay=cfg.pop("weight_decay"), bn_weight_decay=cfg.pop("bn_weight_decay"))
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

COMMON_OPTIM_KEYS = {"name", "weight_decay", "bn_weight_decay"}  # per group, or the tag (recipe.training.Common)


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
    assert set(registry) == set(schemas(union)), "recipe.optim registry vs recipe/schema.py union tags"
    assert set(registry) == presets(group), f"recipe.optim registry vs conf/{group}/*.yaml"
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
        cfg = schemas(OptimConfig)[name].model_validate(optim_cfg(name)).model_dump()
        assert type(optimizer_from_conf(m, cfg, [1e-3] * len(m.groups))) is CLASSES[name]
