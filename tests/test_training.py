"""The training stages (recipe.train.finetune, recipe.train.learner) on a few tiny images: what a
training stage trains on and writes into its checkpoint."""
from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch

from conftest import noise_image
from recipe.core.config import StageParams, load_section
from recipe.core.errors import DataError
from recipe.data.loader import ImageSet
from recipe.decide.evaluate import format_table
from recipe.train import finetune
from recipe.train.learner import fit_set, watch
from recipe.train.schema import FinetuneConfig, LrFindConfig
from recipe.train.session import Data, load_checkpoint, new_model, save_checkpoint
from stages._training import common_config as _common_config


def common_config(p):
    """The shared sections of a model stage, from a whole params dict."""
    return _common_config(StageParams("test", ["seed", "train", "model", "optim", "augment"], p))


def _tiny_split(tmp_path):
    """12 noise images, classes a / b alternating: 8 train, 4 valid."""
    rows = []
    for i in range(12):
        noise_image(tmp_path / "raw" / "files" / f"{i}.png", i, size=32)
        rows.append({"path": f"{i}.png", "label": "ab"[i % 2], "split": "train" if i < 8 else "valid"})
    pd.DataFrame(rows).to_csv(tmp_path / "split.csv", index=False)


def test_finetune_keeps_the_model_config_of_the_checkpoint_it_loaded(tmp_path, params):
    """The checkpoint has an avgmax head while params.yaml says avg: finetune's checkpoint must
    describe the model it trained (it once wrote params.yaml's model section, which did not load)."""
    _tiny_split(tmp_path)
    p = copy.deepcopy(params)
    p["model"] = {**p["model"], "name": "resnet18", "weights": None}
    p["train"] = {**p["train"], "image_size": 32, "batch_size": 4, "workers": 1}
    p["finetune"] = {**p["finetune"], "epochs": 1}
    loaded = copy.deepcopy(p["model"])
    loaded["head"] = {**loaded["head"], "pool": "avgmax"}
    common = common_config(p)
    start = new_model(common_config({**p, "model": loaded}).model, ["a", "b"], [0.5, 0.5])
    save_checkpoint(tmp_path / "head.pt", start, classes=["a", "b"], size=32, model_config=loaded,
                    stage="train_head", epoch=1, channels=1)
    finetune.run(common, load_section("finetune", FinetuneConfig, p), load_section("lr_find", LrFindConfig, p),
             split=tmp_path / "split.csv", raw=tmp_path / "raw", checkpoint=tmp_path / "head.pt",
             out=tmp_path / "ft" / "model.pt", history_csv=tmp_path / "ft" / "history.csv", lr_find_dir=tmp_path / "lr")
    model, meta = load_checkpoint(tmp_path / "ft" / "model.pt")
    assert meta["model_config"]["head"]["pool"] == "avgmax"
    assert model.head.fc.in_features == 2 * 512
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 2)


def _tiny_params(params, **finetune):
    p = copy.deepcopy(params)
    p["model"] = {**p["model"], "name": "resnet18", "weights": None}
    p["train"] = {**p["train"], "image_size": 32, "batch_size": 4, "workers": 1, "patience": 1, "keep": "best"}
    p["finetune"] = {**p["finetune"], "epochs": 3, "lr": 0.3, **finetune}
    return p


def _run_finetune(tmp_path, p, name):
    common = common_config(p)
    start = new_model(common.model, ["a", "b"], [0.5, 0.5])
    save_checkpoint(tmp_path / "head.pt", start, classes=["a", "b"], size=32, model_config=p["model"],
                    stage="train_head", epoch=1, channels=1)
    out = tmp_path / name
    metrics = finetune.run(common, load_section("finetune", FinetuneConfig, p), load_section("lr_find", LrFindConfig, p),
                       split=tmp_path / "split.csv", raw=tmp_path / "raw", checkpoint=tmp_path / "head.pt",
                       out=out / "model.pt", history_csv=out / "history.csv", lr_find_dir=tmp_path / "lr")
    return metrics, pd.read_csv(out / "history.csv")


def test_fit_on_train_valid_trains_on_both_and_runs_the_schedule_to_its_end(tmp_path, params, capsys):
    """train+valid: 12 images a step instead of 8, no early stopping (patience 1 would stop a
    run whose valid loss rises), and the checkpoint is the last epoch's weights."""
    _tiny_split(tmp_path)
    p = _tiny_params(params, fit_on="train+valid", schedule={"name": "constant"})
    metrics, history = _run_finetune(tmp_path, p, "tv")
    assert metrics["fit_on"] == "train+valid" and metrics["train_images"] == 12
    assert len(history) == 3  # the whole schedule, whatever the valid loss did
    assert "fit on train + valid (8 + 4 images)" in capsys.readouterr().out
    # the checkpoint scores on valid exactly as the last epoch did (keep: last)
    assert metrics["valid_loss"] == pytest.approx(history["valid_loss"].iloc[-1], rel=1e-6)

    q = _tiny_params(params, fit_on="train", schedule={"name": "constant"})
    metrics, history = _run_finetune(tmp_path, q, "t")
    assert metrics["fit_on"] == "train" and metrics["train_images"] == 8


def test_image_sets_join_only_when_they_match():
    a = ImageSet(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1]), ["x", "y"], ["a", "b"],
                 torch.tensor([[1.0, 0.0], [0.3, 0.7]]))
    b = ImageSet(torch.ones(1, 1, 8, 8, dtype=torch.uint8), torch.tensor([1]), ["z"], ["a", "b"], torch.tensor([[0.0, 1.0]]))
    ab = a + b
    assert ab.paths == ["x", "y", "z"] and ab.labels.tolist() == [0, 1, 1] and ab.images[2].max() == 1
    assert torch.equal(ab.targets, torch.cat([a.targets, b.targets]))
    with pytest.raises(DataError, match="soft targets"):
        a + ImageSet(b.images, b.labels, b.paths, b.classes)
    with pytest.raises(DataError, match="classes"):
        a + ImageSet(b.images, b.labels, b.paths, ["a", "c"], b.targets)


def test_fit_set_turns_off_early_stopping_only_for_train_valid(params):
    p = copy.deepcopy(params)
    p["train"] = {**p["train"], "patience": 2, "keep": "best"}
    common = common_config(p)
    one = lambda n: ImageSet(torch.zeros(n, 1, 4, 4, dtype=torch.uint8), torch.zeros(n, dtype=torch.int64),
                             [str(i) for i in range(n)], ["a", "b"])
    data = Data(one(5), one(3), ["a", "b"])
    images, stopping = fit_set(data, "train", common, "finetune")
    assert images is data.train and stopping == {"patience": 2, "keep": "best"}
    images, stopping = fit_set(data, "train+valid", common, "finetune")
    assert len(images) == 8 and stopping == {"patience": None, "keep": "last"}


def test_stage_table_marks_a_stage_fit_on_train_valid():
    text = format_table({"train_head": {"size": 128, "valid_accuracy": 0.8, "test_accuracy": 0.79},
                         "finetune": {"size": 128, "valid_accuracy": None, "test_accuracy": 0.86, "fit_on": "train+valid"}})
    head, lines = text.splitlines()[0], text.splitlines()[1:]
    assert "80.00%" in lines[0] and "(train+valid)" in lines[1] and "86.00%" in lines[1]
    assert all(len(line) == len(head) for line in lines)


def test_watch_is_stratified_seeded_and_sorted_by_class():
    labels = torch.tensor([0] * 30 + [1] * 10)
    valid = ImageSet(torch.zeros(40, 1, 4, 4, dtype=torch.uint8), labels, [f"{i}.png" for i in range(40)], ["a", "b"])
    w = watch(valid, 8, seed=3)
    assert [valid.labels[i].item() for i in w.index] == [0] * 6 + [1] * 2  # 30:10 of 8 images
    assert w.labels == ["a"] * 6 + ["b"] * 2 and w.paths == [f"{i}.png" for i in w.index]
    assert w.index[:6] == sorted(w.index[:6]) and w == watch(valid, 8, seed=3) and w != watch(valid, 8, seed=4)
    assert len(set(watch(valid, 40, seed=0).index)) == 40 and watch(valid, 0, seed=0) is None
    rare = ImageSet(valid.images, torch.tensor([0] * 39 + [1]), valid.paths, ["a", "b"])
    assert [rare.labels[i].item() for i in watch(rare, 4, seed=0).index] == [0, 0, 0, 1]  # a class gets one


def test_a_stage_writes_one_dynamics_row_per_watched_image_per_epoch_and_every_batchs_rates(tmp_path, params):
    _tiny_split(tmp_path)
    p = _tiny_params(params, epochs=2, lr_mult=10)
    p["train"] = {**p["train"], "dynamics_images": 3, "patience": None}
    p["finetune"] = {**p["finetune"], "unfreeze_to": 0}
    _, history = _run_finetune(tmp_path, p, "ft")
    dyn = pd.read_csv(tmp_path / "ft" / "dynamics.csv")
    assert len(dyn) == 3 * len(history) == 6
    assert dyn.groupby("epoch").size().tolist() == [3, 3] and dyn["image"].nunique() == 3
    assert dyn["p_true"].between(0, 1).all() and set(dyn["label"]) <= {"a", "b"}
    sched = pd.read_csv(tmp_path / "ft" / "lr_schedule.csv")
    groups = sorted(sched["group"].unique())
    assert len(groups) == 3  # every layer group from unfreeze_to 0
    assert sched.groupby("group").size().tolist() == [2 * 2] * 3  # 8 train images, batch 4: 2 batches an epoch
    first = sched[sched["step"] == 0].set_index("group")["lr"]
    assert first.max() / first.min() == pytest.approx(10)  # lr_mult spreads the rates
    assert (tmp_path / "ft" / "lr_schedule.png").stat().st_size > 0


@pytest.mark.parametrize("setting, head, pixels, margin, whole, expected", [
    ("auto", 0.84, 0.70, 0.0, 15, (1, 7)),    # ELPV-like: the head on frozen features beats the pixels: the late body
    ("auto", 0.70, 0.97, 0.0, 15, (0, 15)),   # digits-like: the pixels beat the head: all of it, and longer
    ("auto", 0.70, 0.97, 0.0, None, (0, 7)),  # whole_body_epochs null: as long as the late body would
    ("auto", 0.80, 0.80, 0.0, 15, (0, 15)),   # a tie is no sign that the features fit
    ("auto", 0.84, 0.80, 0.05, 15, (0, 15)),  # a margin the head must clear
    ("auto", 0.84, None, 0.0, 15, (1, 7)),    # no pixels baseline (baseline.pixels.side: null): the late body
    (2, 0.10, 0.99, 0.0, 15, (2, 7)),         # a number pins the depth and leaves epochs as set, whatever the data say
    (0, 0.10, 0.99, 0.0, 15, (0, 7)),
])
def test_the_unfreeze_rule_on_hand_made_figures(setting, head, pixels, margin, whole, expected):
    first, epochs, why = finetune.unfreeze_rule(setting, groups=3, head_valid=head, pixels_valid=pixels, margin=margin,
                                                epochs=7, whole_body_epochs=whole)
    assert (first, epochs) == expected and why
    assert ("do not fit" in why) == (setting == "auto" and expected[0] == 0)


def test_the_balanced_sampler_draws_every_class_about_equally_and_shuffle_each_image_once(params):
    """train.sampler: balanced draws each epoch's images with replacement, a class's in proportion
    to 1 / its count (a long tail: 180 / 20 / 4 images), seeded by (seed, epoch); shuffle is a
    permutation; the baseline checks' batches (sampled=False) never balance."""
    from recipe.train.learner import Common
    from recipe.train.schema import TrainConfig

    labels = torch.tensor([0] * 180 + [1] * 20 + [2] * 4)
    images = ImageSet(torch.zeros(len(labels), 1, 2, 2, dtype=torch.uint8), labels, [str(i) for i in range(len(labels))],
                      ["a", "b", "c"])
    train = load_section("train", TrainConfig, params).model_copy(update={"batch_size": 16, "channels_last": False})
    common = lambda sampler: Common(seed=3, train=train.model_copy(update={"sampler": sampler}), model=None, optim=None,
                                    augment=None)
    drawn = lambda b, epoch: torch.cat([y for _, y in b.epoch(epoch)])
    shuffled = common("shuffle").batches(images, torch.device("cpu"), train=True, augment=False, sampled=True)
    assert sorted(drawn(shuffled, 0).tolist()) == sorted(labels.tolist())  # every image once
    balanced = common("balanced").batches(images, torch.device("cpu"), train=True, augment=False, sampled=True)
    counts = torch.stack([torch.bincount(drawn(balanced, e), minlength=3) for e in range(20)]).sum(0).double()
    assert counts.sum() == 20 * len(labels) and (counts / counts.sum() - 1 / 3).abs().max() < 0.03
    assert torch.equal(drawn(balanced, 5), drawn(common("balanced").batches(images, torch.device("cpu"), train=True,
                                                                              augment=False, sampled=True), 5))  # seeded
    checks = common("balanced").batches(images, torch.device("cpu"), train=True, augment=False)  # not sampled
    assert sorted(drawn(checks, 0).tolist()) == sorted(labels.tolist())


def test_train_mix_blends_the_training_stages_batches_only(params):
    """train.mix: mixup and cutmix turn a training stage's batches (sampled) into soft targets over
    the classes; the checks' and evaluation batches, and mix none, keep the labels."""
    from recipe.train.learner import Common
    from recipe.train.schema import AugmentConfig, TrainConfig

    labels = torch.tensor([0, 1, 2] * 6)
    images = ImageSet((torch.rand(len(labels), 1, 8, 8) * 255).to(torch.uint8), labels,
                      [str(i) for i in range(len(labels))], ["a", "b", "c"])
    train = load_section("train", TrainConfig, params).model_copy(update={"batch_size": 6, "channels_last": False})
    augment = load_section("augment", AugmentConfig, params)
    cpu = torch.device("cpu")
    for kind in ("mixup", "cutmix"):
        common = Common(seed=0, train=train.model_copy(update={"mix": kind}), model=None, optim=None, augment=augment)
        _, t = next(iter(common.batches(images, cpu, train=True, sampled=True).epoch(0)))
        assert t.shape == (6, 3) and torch.allclose(t.sum(1), torch.ones(6)) and (t < 1).any()
        _, y = next(iter(common.batches(images, cpu, train=True).epoch(0)))  # the baseline checks, the range test
        assert y.dtype == torch.int64
        assert next(iter(common.batches(images, cpu, train=False)))[1].dtype == torch.int64
    plain = Common(seed=0, train=train, model=None, optim=None, augment=augment)  # conf/'s default: none
    assert next(iter(plain.batches(images, cpu, train=True, sampled=True).epoch(0)))[1].dtype == torch.int64


def test_balanced_class_weights_weigh_every_class_alike(params):
    """train.class_weights: balanced weights each class by n / (classes * count) (sklearn's
    "balanced"): on a batch with one rare image, the rare class's loss counts as much as the
    common class's; none leaves the loss unweighted."""
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    from recipe.train.learner import Common, class_weights
    from recipe.train.schema import TrainConfig

    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2])  # 4 classes, class 3 absent from train
    w = class_weights(labels, 4)
    assert w[:3].tolist() == pytest.approx(compute_class_weight("balanced", classes=np.arange(3), y=labels.numpy()))
    assert w[3] == 0
    train = load_section("train", TrainConfig, params)
    logits = torch.randn(9, 4, generator=torch.Generator().manual_seed(0))
    plain = Common(seed=0, train=train, model=None, optim=None, augment=None).loss(labels, 4)
    assert plain.weight is None and plain(logits, labels) == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels).item())
    balanced = Common(seed=0, train=train.model_copy(update={"class_weights": "balanced"}), model=None, optim=None,
                      augment=None).loss(labels, 4)
    per = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    means = torch.stack([per[labels == c].mean() for c in range(3)])
    assert balanced(logits, labels).item() == pytest.approx(means.mean().item(), rel=1e-5)  # each class alike
