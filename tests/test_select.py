"""select: candidates, scoring on valid only, the choice, the threshold; the size rule; SGDR cycle ends."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, noise_image
from recipe.core.config import load_section, read_params
from recipe.core.errors import ConfigError
from recipe.core.layout import TRAINING_STAGES
from recipe.data.sizes import resize_size, train_batch, train_size
from recipe.decide import select as S
from recipe.decide.schema import ScoringConfig, SelectConfig
from recipe.train.learner import Common
from recipe.train.models import build_model
from recipe.train.optim import cycle_ends
from recipe.train.schema import AugmentConfig, TrainConfig
from recipe.train.session import save_checkpoint

CFG = {"name": "resnet18", "weights": None, "mean": [0.5] * 3, "std": [0.25] * 3,
       "head": {"pool": "avg", "dropout": 0.0, "init": "kaiming", "init_gain": 1.0, "prior_bias": False}}


def config(**changes) -> SelectConfig:
    """conf/'s select section (params.yaml), with changes."""
    base = load_section("select", SelectConfig, read_params(REPO / "params.yaml")).model_dump()
    return SelectConfig(**{**base, **changes})


def scoring(engine: str = "auto") -> ScoringConfig:
    """conf/'s scoring section with ``engine``."""
    return load_section("scoring", ScoringConfig, read_params(REPO / "params.yaml")).model_copy(update={"engine": engine})


def row(name, views, loss, acc, cost, members=None):
    return {"candidate": name, "views": views, "members": members or [name], "valid_log_loss": loss,
            "valid_accuracy": acc, "seconds_per_image": cost}


ROWS = [row("resize", "none", 0.30, 0.88, 1.0), row("resize", "flips", 0.28, 0.89, 4.0),
        row("finetune+resize", "flips", 0.25, 0.90, 6.0, ["finetune", "resize"]),
        row("finetune+resize", "none", 0.251, 0.90, 1.5, ["finetune", "resize"]),
        row("train_head", "none", 0.40, 0.90, 0.3)]


def test_choose_picks_the_known_best_and_breaks_ties_toward_the_cheaper():
    assert S.choose(ROWS, config()) is ROWS[2]  # lowest valid log loss
    assert S.choose(ROWS, config(tolerance=0.002)) is ROWS[3]  # within 0.002: the cheaper ensemble without views
    assert S.choose(ROWS, config(criterion="accuracy")) is ROWS[4]  # three at 0.90: the cheapest
    assert S.choose(ROWS, config(candidate="resize")) is ROWS[1]  # pinned candidate, its best views
    assert S.choose(ROWS, config(views="none")) is ROWS[3]  # pinned views
    with pytest.raises(ConfigError, match="select.candidate = 'nope': not a candidate"):
        S.choose(ROWS, config(candidate="nope"))


def test_threshold_search_has_the_known_answer():
    p1 = np.array([0.10, 0.20, 0.35, 0.40, 0.45, 0.90])
    probs = np.stack([1 - p1, p1], 1)
    labels = np.array([0, 0, 1, 1, 1, 1])
    # argmax (0.5) gets 3 of 6 right; any cut in (0.2, 0.35] gets all 6; the midpoint is 0.275
    assert S.pick_threshold(probs, labels, "accuracy") == pytest.approx(0.275)
    assert S.thresholded(probs, labels, 0.275)["accuracy"] == 1.0 and S.thresholded(probs, labels, None)["accuracy"] == 0.5
    assert S.pick_threshold(probs, labels, "balanced_accuracy") == pytest.approx(0.275)
    assert S.pick_threshold(probs, labels, "off") is None and S.pick_threshold(probs, labels, 0.7) == 0.7
    # ties: every cut that is as good; the one nearest 0.5 wins (here all cuts between 0.45 and 0.9 tie at 4/6... and 0.5)
    even = np.stack([1 - np.array([0.1, 0.9]), np.array([0.1, 0.9])], 1)
    assert S.pick_threshold(even, np.array([0, 1]), "accuracy") == 0.5
    # three cuts tie at 5 of 7 (0.15, 0.35 and 0.75; 0.5 gets 4): the nearest 0.5 is 0.35, neither
    # the lowest nor the highest of them
    p1 = np.array([0.1, 0.2, 0.3, 0.4, 0.7, 0.8, 0.9])
    tied, labels = np.stack([1 - p1, p1], 1), np.array([0, 1, 0, 1, 0, 1, 1])
    assert [S.thresholded(tied, labels, t)["accuracy"] * 7 for t in (0.15, 0.35, 0.75, 0.5)] == \
        pytest.approx([5, 5, 5, 4])
    assert S.pick_threshold(tied, labels, "accuracy") == pytest.approx(0.35)
    # one positive among six: accuracy's best cut (0.85, 4 of 6 right) calls everything negative;
    # balanced accuracy's (0.35: recall 1 and 2/5, 0.7) is another cut
    p1 = np.array([0.1, 0.3, 0.4, 0.6, 0.8, 0.9])
    rare, labels = np.stack([1 - p1, p1], 1), np.array([0, 0, 1, 0, 0, 0])
    assert S.pick_threshold(rare, labels, "accuracy") == pytest.approx(0.85)
    assert S.pick_threshold(rare, labels, "balanced_accuracy") == pytest.approx(0.35)
    assert S.thresholded(rare, labels, 0.35) == pytest.approx({"accuracy": 0.5, "balanced_accuracy": 0.7})
    assert S.thresholded(rare, labels, 0.85) == pytest.approx({"accuracy": 4 / 6, "balanced_accuracy": 0.4})
    assert S.pick_threshold(np.full((3, 3), 1 / 3), np.array([0, 1, 2]), "accuracy") is None  # three classes


def test_candidates_expand_snapshots_and_skip_what_is_missing(tmp_path):
    singles = {n: tmp_path / f"{n}.pt" for n in ("train_head", "finetune", "finetune@0", "finetune@2", "finetune@ema",
                                                  "resize", "resize@0")}
    cands = S.candidates(singles, [["finetune", "resize"], ["finetune@snapshots"], ["finetune@snapshots", "resize@snapshots"],
                                   ["resize@snapshots"], ["finetune", "finetune@9"], ["finetune", "finetune@ema"]],
                         aliases={"finetune@6": "finetune"})
    by = {c.name: c.members for c in cands}
    assert by["finetune+finetune@ema"] == ("finetune", "finetune@ema")  # the moving average: a member by name
    assert by["finetune@ema"] == ("finetune@ema",)  # and a candidate of its own, never one of the snapshots
    assert by["finetune+resize"] == ("finetune", "resize")
    assert by["finetune@snapshots"] == ("finetune@0", "finetune@2", "finetune")  # @6 is finetune's own weights
    assert by["finetune@snapshots+resize@snapshots"] == ("finetune@0", "finetune@2", "finetune", "resize@0")
    assert "resize@snapshots" not in by and "finetune+finetune@9" not in by  # one member only: not an ensemble
    assert [c.name for c in cands[:7]] == list(singles)
    with pytest.raises(ConfigError, match="'nope' is not a stage .*, pixels, <stage>@snapshots"):
        S.candidates(singles, [["nope", "resize"]])
    # the baseline's logistic regression on the pixels may join a network; without it, no ensemble is left
    with_pixels = S.candidates({"pixels": tmp_path / "pixels.pt", **singles}, [["pixels", "finetune"]])
    assert [c.members for c in with_pixels if c.name == "pixels+finetune"] == [("pixels", "finetune")]
    assert "pixels+finetune" not in {c.name for c in S.candidates(singles, [["pixels", "finetune"]])}


def _checkpoint(path, seed, classes=("a", "b")):
    torch.manual_seed(seed)
    h = CFG["head"]
    m = build_model(name="resnet18", weights=None, mean=CFG["mean"], std=CFG["std"], classes=2, pool="avg",
                    dropout=0.0, init="kaiming", init_gain=h["init_gain"]).eval()
    return save_checkpoint(path, m, classes=list(classes), size=32, model_config=CFG, stage=path.stem, epoch=1,
                           channels=1)


def _common() -> Common:
    params = read_params(REPO / "params.yaml")
    train = load_section("train", TrainConfig, params).model_copy(update={"image_size": 32, "workers": 1, "batch_size": 4})
    return Common(seed=0, train=train, model=None, optim=None, augment=load_section("augment", AugmentConfig, params))


def test_checkpoints_find_the_moving_average_beside_the_snapshots(tmp_path):
    dirs = {s: tmp_path / s for s in TRAINING_STAGES}
    _checkpoint(dirs["finetune"] / "model.pt", 0)
    _checkpoint(dirs["finetune"] / "snapshots" / "epoch_3.pt", 1)
    _checkpoint(dirs["finetune"] / "snapshots" / "ema.pt", 2)
    shutil.copytree(dirs["finetune"], dirs["resize"])  # resize passed finetune on: its average is finetune's too
    singles, aliases = S.checkpoints(dirs)
    assert list(singles) == ["finetune", "finetune@3", "finetune@ema"]
    assert aliases == {"resize": "finetune", "resize@3": "finetune@3", "resize@ema": "finetune@ema"}
    cands = S.candidates(singles, [["finetune@snapshots", "resize"]], aliases)  # the average is no snapshot
    assert {c.name: c.members for c in cands}["finetune@snapshots+resize"] == ("finetune@3", "finetune")


def test_score_reads_the_valid_split_only_and_identical_members_equal_one(tmp_path):
    raw = tmp_path / "raw"
    rows = []
    for i in range(8):
        label = "ab"[i % 2]
        noise_image(raw / "files" / f"{label}{i}.png", i, size=40)
        rows.append({"path": f"{label}{i}.png", "label": label, "split": "valid", "group": i})
    for i in range(4):  # test rows whose files do not exist: reading one would fail the test
        rows.append({"path": f"missing{i}.png", "label": "ab"[i % 2], "split": "test", "group": 100 + i})
    rows.append({"path": "t.png", "label": "a", "split": "train", "group": 200})
    pd.DataFrame(rows).to_csv(tmp_path / "split.csv", index=False)
    dirs = {s: tmp_path / s for s in TRAINING_STAGES}
    _checkpoint(dirs["finetune"] / "model.pt", 0)
    (dirs["finetune"] / "snapshots").mkdir()
    shutil.copy(dirs["finetune"] / "model.pt", dirs["finetune"] / "snapshots" / "epoch_2.pt")  # = model.pt
    _checkpoint(dirs["finetune"] / "snapshots" / "epoch_0.pt", 1)
    _checkpoint(dirs["resize"] / "model.pt", 2)
    singles, aliases = S.checkpoints(dirs)
    assert list(singles) == ["finetune", "finetune@0", "resize"] and aliases == {"finetune@2": "finetune"}
    common = _common()
    cfg = config(view_sets=["none", "flips"], ensembles=[["finetune", "finetune"], ["finetune@snapshots"]],
                 views_for=None)
    cands = S.candidates(singles, cfg.ensembles, aliases)
    assert [c.name for c in cands] == ["finetune", "finetune@0", "resize", "finetune@snapshots"]
    cands.append(S.Candidate("twice", ("finetune", "finetune")))  # an ensemble of identical members
    out, scores, sets, classes = S.score(common, cfg, singles=singles, cands=cands, split=tmp_path / "split.csv",
                                         raw=raw, scoring=scoring("torch"))
    assert classes == ["a", "b"] and len(scores.labels) == 8  # the 8 valid images, nothing else
    # ONNX Runtime scores every network to PyTorch's figures (recipe.decide.engine)
    ort_rows, _, _, _ = S.score(common, cfg, singles=singles, cands=cands, split=tmp_path / "split.csv", raw=raw,
                                scoring=scoring("onnxruntime"))
    assert [(r["candidate"], r["views"]) for r in ort_rows] == [(r["candidate"], r["views"]) for r in out]
    for a, b in zip(ort_rows, out):
        assert a["valid_log_loss"] == pytest.approx(b["valid_log_loss"], abs=1e-5)
        assert a["valid_accuracy"] == b["valid_accuracy"]
    assert len(out) == len(cands) * 2 and {r["views"] for r in out} == {"none", "flips"}
    by = {(r["candidate"], r["views"]): r for r in out}
    for v in ("none", "flips"):
        assert by[("twice", v)]["valid_log_loss"] == pytest.approx(by[("finetune", v)]["valid_log_loss"], abs=1e-12)
        assert by[("twice", v)]["seconds_per_image"] == pytest.approx(2 * by[("finetune", v)]["seconds_per_image"])
    assert by[("finetune", "flips")]["seconds_per_image"] == pytest.approx(4 * by[("finetune", "none")]["seconds_per_image"])
    p = S.combine(scores, cands[3], 32, sets[0])  # the snapshot ensemble: the mean of its members
    mean = (S.combine(scores, cands[0], 32, sets[0]) + S.combine(scores, cands[1], 32, sets[0])) / 2
    np.testing.assert_allclose(p, mean, atol=1e-12)
    # select.views_for: only the best candidates without views get the views, from the same probabilities
    best = min((r for r in out if r["views"] == "none"), key=lambda r: (r["valid_log_loss"], out.index(r)))
    few, few_scores, _, _ = S.score(common, cfg.model_copy(update={"views_for": 1, "candidate": "finetune@0"}),
                                    singles=singles, cands=cands, split=tmp_path / "split.csv", raw=raw,
                                    scoring=scoring("torch"))
    assert {(r["candidate"], r["views"]) for r in few} == {(c.name, "none") for c in cands} | {
        (best["candidate"], "flips"), ("finetune@0", "flips")}  # the best plainly, and the pinned one
    for r in few:
        assert r["valid_log_loss"] == pytest.approx(by[(r["candidate"], r["views"])]["valid_log_loss"], abs=1e-12)
    viewed = {m for c in cands if c.name in (best["candidate"], "finetune@0") for m in c.members}
    for (member, _), probs in few_scores.probs.items():
        assert (len(probs) > 1) == (member in viewed)  # no other member's extra views were computed


def test_score_refuses_a_member_trained_on_other_classes(tmp_path):
    """Members whose class lists differ from the split's (here the same names in another order,
    so column 0 would mean another class) are refused before anything is scored."""
    from recipe.core.errors import DataError

    raw = tmp_path / "raw"
    rows = []
    for i in range(4):
        label = "ab"[i % 2]
        noise_image(raw / "files" / f"{label}{i}.png", i, size=40)
        rows.append({"path": f"{label}{i}.png", "label": label, "split": "valid", "group": i})
    pd.DataFrame(rows).to_csv(tmp_path / "split.csv", index=False)
    singles = {"finetune": _checkpoint(tmp_path / "finetune" / "model.pt", 0),
               "resize": _checkpoint(tmp_path / "resize" / "model.pt", 2, classes=("b", "a"))}
    cfg = config(view_sets=["none"], ensembles=[["finetune", "resize"]])
    cands = S.candidates(singles, cfg.ensembles)
    assert [c.name for c in cands] == ["finetune", "resize", "finetune+resize"]
    with pytest.raises(DataError, match=r"resize/model\.pt: trained on classes \['b', 'a'\], the split has \['a', 'b'\]"):
        S.score(_common(), cfg, singles=singles, cands=cands, split=tmp_path / "split.csv", raw=raw, scoring=scoring())

def test_size_rule_from_the_data():
    # ELPV's 300 px cells: 128 then 224, as measured; 8 px digits: 128 and no resize (a 28x upscale)
    assert train_size("auto", 300, low=128, high=128) == 128 and train_size("auto", 8, low=128, high=128) == 128
    assert train_size("auto", 8, low=64, high=128) == 64 and train_size("auto", 100, low=32, high=128) == 96
    assert resize_size("auto", None, from_size=128, side=300, high=224) == 224
    assert resize_size("auto", None, from_size=64, side=8, high=224) is None
    assert resize_size("auto", None, from_size=128, side=160, high=224) == 160
    assert resize_size("auto", None, from_size=128, side=140, high=224) is None  # 128 is as large as it gets
    assert train_size(96, 300, low=64, high=128) == 96 and resize_size(192, None, from_size=128, side=8, high=224) == 192
    assert resize_size(None, 1.5, from_size=128, side=300, high=224) == 192


def test_batch_rule_from_the_data():
    # conf/'s bounds: ELPV's 1,575 train images and the digits' 1,078 keep 32; the long-tailed digits' 407 get 8
    rule = {"low": 8, "high": 32, "steps": 32}
    assert train_batch("auto", 1575, **rule) == 32 and train_batch("auto", 1078, **rule) == 32
    assert train_batch("auto", 407, **rule) == 8 and train_batch("auto", 600, **rule) == 16
    assert train_batch("auto", 1024, **rule) == 32 and train_batch("auto", 1023, **rule) == 16  # 32 batches of 32
    assert train_batch("auto", 20, **rule) == 8  # never under min, however few the images
    assert train_batch(64, 20, **rule) == 64  # a number is taken as it is
    assert train_batch("auto", 100, low=32, high=32, steps=24) == 32
    with pytest.raises(ValueError, match="at least min"):  # bounds the wrong way round are refused
        TrainConfig.model_validate({**read_params(REPO / "params.yaml")["train"], "auto_batch": {"min": 64, "max": 32, "steps": 32}})
    with pytest.raises(ValueError, match="at least min"):  # the image size's bounds too
        TrainConfig.model_validate({**read_params(REPO / "params.yaml")["train"],
                                    "auto_size": {"min": 256, "max": 128, "resize_max": 224}})


def test_sgdr_cycle_ends_are_the_snapshot_epochs():
    sgdr = {"name": "sgdr", "cycle_len": 1, "cycle_mult": 2, "eta_min": 0.0}
    assert cycle_ends(sgdr, 7) == [0, 2, 6] and cycle_ends(sgdr, 3) == [0, 2]
    assert cycle_ends(sgdr, 5) == [0, 2, 4]  # the last epoch too, mid-cycle
    assert cycle_ends({**sgdr, "cycle_len": 2, "cycle_mult": 1}, 6) == [1, 3, 5]
    assert cycle_ends({"name": "onecycle"}, 7) == []


def test_train_size_auto_becomes_a_number_from_split_csv(tmp_path, capsys):
    from recipe.core.config import StageParams
    from stages._training import common_config

    params = read_params(REPO / "params.yaml")
    assert params["train"]["image_size"] == "auto"  # conf/'s default
    assert params["train"]["batch_size"] == "auto"
    rows = [{"path": f"{i}.png", "label": "ab"[i % 2], "split": "train" if i < 3 else "valid", "group": i,
             "width": 300, "height": 240 + i} for i in range(5)]
    pd.DataFrame(rows).to_csv(tmp_path / "split.csv", index=False)
    p = StageParams("train_head", ["seed", "train", "augment"], params)
    common = common_config(p, tmp_path / "split.csv")
    out = capsys.readouterr().out
    assert common.train.image_size == 128 and "train.image_size auto: 128 px" in out
    assert common.train.batch_size == 8 and "train.batch_size auto: 8 (3 train images, 0.4 batches an epoch)" in out
    assert common_config(p).train.image_size == "auto"  # stages that train at a checkpoint's size leave it
    finetune = common_config(p, tmp_path / "split.csv", image_size=False).train  # trains at its checkpoint's size
    assert (finetune.image_size, finetune.batch_size) == ("auto", 8)
    assert common_config(p).train.batch_size == 32  # a stage that only scores: the rule's largest
    pd.DataFrame(rows).drop(columns=["width", "height"]).to_csv(tmp_path / "old.csv", index=False)
    with pytest.raises(Exception, match="no width/height columns"):
        common_config(p, tmp_path / "old.csv")


def test_identical_weights_are_one_model_scored_once_and_one_member(tmp_path):
    """resize passed finetune's model on (a byte copy): the ensemble finetune+resize is finetune
    alone, scored and shipped with one member; resize stays a candidate, made from finetune's scores."""
    dirs = {s: tmp_path / s for s in TRAINING_STAGES}
    _checkpoint(dirs["train_head"] / "model.pt", 0)
    _checkpoint(dirs["finetune"] / "model.pt", 1)
    (dirs["resize"]).mkdir()
    shutil.copy(dirs["finetune"] / "model.pt", dirs["resize"] / "model.pt")
    (dirs["resize"] / "snapshots").mkdir()
    shutil.copy(dirs["train_head"] / "model.pt", dirs["resize"] / "snapshots" / "epoch_0.pt")  # = train_head's
    singles, aliases = S.checkpoints(dirs)
    assert list(singles) == ["train_head", "finetune"]
    assert aliases == {"resize": "finetune", "resize@0": "train_head"}
    cands = S.candidates(singles, [["finetune", "resize"], ["train_head", "finetune", "resize"], ["resize@snapshots"]],
                         aliases)
    by = {c.name: c.members for c in cands}
    assert by == {"train_head": ("train_head",), "finetune": ("finetune",), "resize": ("finetune",),
                  "train_head+finetune+resize": ("train_head", "finetune")}
    rows = [{"candidate": c.name, "views": "none", "members": list(c.members), "valid_log_loss": 0.3,
             "valid_accuracy": 0.9, "seconds_per_image": 0.01 * len(c.members)} for c in cands]
    assert S.choose(rows[1:3], config())["candidate"] == "finetune"  # the tie goes to the earlier: the same model


def _bright_or_dark(raw, name: str, label: str, seed: int) -> None:
    """A 24 px gray image: class b is bright, class a dark, both noisy (pixels tell them apart)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = 190 if label == "b" else 60
    pixels = np.clip(base + rng.normal(0, 25, (24, 24)), 0, 255).astype(np.uint8)
    (raw / "files").mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "L").save(raw / "files" / name)


def test_select_ships_a_planted_pixels_baseline_that_beats_the_networks(tmp_path):
    """Logistic regression on the pixels (fitted by recipe.train.pixels) separates bright from dark;
    two random networks do not: select ships the baseline, says it is the best baseline, and the
    bundle exports to ONNX and predicts like any other model."""
    from types import SimpleNamespace

    from recipe.decide.ensemble import load_bundle, save_bundle
    from recipe.ship import export as E
    from recipe.train.pixels import fit_pixels
    from recipe.train.session import load_data

    raw, rows = tmp_path / "raw", []
    for i, split in enumerate(["train"] * 16 + ["valid"] * 10 + ["test"] * 6):
        label = "ab"[i % 2]
        _bright_or_dark(raw, f"{split}{i}.png", label, i)
        rows.append({"path": f"{split}{i}.png", "label": label, "split": split, "group": i})
    pd.DataFrame(rows).to_csv(tmp_path / "split.csv", index=False)
    common = _common()
    data = load_data(tmp_path / "split.csv", raw, size=32, workers=1)
    numbers = fit_pixels(common, data, torch.device("cpu"), side=4, strengths=[0.1, 1.0], out=tmp_path / "pixels.pt",
                         size=32)
    assert numbers["pixels_accuracy"] == 1.0 and numbers["pixels_C"] in (0.1, 1.0)
    dirs = {s: tmp_path / s for s in TRAINING_STAGES}
    _checkpoint(dirs["finetune"] / "model.pt", 0)
    _checkpoint(dirs["resize"] / "model.pt", 1)
    singles, aliases = S.checkpoints(dirs)
    singles = {"pixels": tmp_path / "pixels.pt", **singles}
    cfg = config(view_sets=["none", "flip_h"], ensembles=[["finetune", "resize"]])
    cands = S.candidates(singles, cfg.ensembles, aliases)
    out, scores, sets, classes = S.score(common, cfg, singles=singles, cands=cands, split=tmp_path / "split.csv",
                                         raw=raw, scoring=scoring())
    d = S.decide_all(out, scores, cands, sets, singles, classes, cfg)
    assert d["candidate"].name == "pixels"
    assert d["summary"]["best_baseline"]["candidate"] == "pixels" and d["summary"]["valid_accuracy_as_chosen"] == 1.0
    bundle = save_bundle(tmp_path / "bundle.pt", [("pixels", singles["pixels"])], views=None, threshold=None, seed=0,
                         info={"candidate": "pixels"})
    model, _ = load_bundle(bundle)
    export_cfg = SimpleNamespace(fold_bn=True, opset=18, dynamic_batch=True, optimize=False, tolerance=1e-4,
                                 parity_images=None)
    m = E.run(export_cfg, bundle=bundle, split=tmp_path / "split.csv", raw=raw, out=tmp_path / "export", workers=1,
              batch_size=4)
    assert m["test_accuracy"]["onnx"] == 1.0 and m["parity"]["onnx_max_abs_diff"] < 1e-4


# --- long tails: criteria that weigh every class alike, and the post-hoc logit adjustment --------------

def _long_tail(seed: int = 0, n: int = 3000):
    """Three classes with train priors 0.7 / 0.2 / 0.1 and a valid split in which they are equally
    common; the model's probabilities are the balanced posteriors q times the priors, renormalised
    (what a network fitted on the train shares learns): dividing by the priors (tau 1) recovers q."""
    rng = np.random.default_rng(seed)
    priors = np.array([0.7, 0.2, 0.1])
    labels = rng.integers(0, 3, n)
    logits = rng.normal(0, 1.0, (n, 3))
    logits[np.arange(n), labels] += 1.5
    q = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    p = q * priors
    return p / p.sum(1, keepdims=True), labels, priors


def test_the_logit_adjustment_finds_the_known_tau_and_the_criteria_weigh_classes_alike():
    probs, labels, priors = _long_tail()
    taus = [0.0, 0.5, 1.0, 1.5, 2.0]
    tau, by = S.pick_logit_adjust(probs, labels, np.log(priors), taus, "balanced_accuracy")
    assert tau == 1.0 and set(by) == set(taus)
    assert by[1.0] > by[0.0] + 0.05  # the rare classes are recalled again
    np.testing.assert_allclose(S.adjusted(probs, np.log(priors), 1.0).sum(1), 1.0)
    assert S.pick_logit_adjust(probs, labels, np.log(priors), [0.0, 1.0], "macro_f1")[0] == 1.0
    # valid_figures: balanced accuracy is the mean of the classes' recalls; the worst recall is the rare class's
    f = S.valid_figures(probs, labels)
    recall, _ = S.per_class(probs.argmax(1), labels, 3)
    assert f["valid_balanced_accuracy"] == pytest.approx(recall.mean()) and f["valid_worst_recall"] == recall.min()
    assert recall.argmin() == 2  # the rarest class in train is the one the unadjusted model misses most
    rows = [row("a", "none", 0.30, 0.90, 1.0), row("b", "none", 0.35, 0.85, 1.0)]
    rows[0].update(valid_balanced_accuracy=0.70, valid_macro_f1=0.72)
    rows[1].update(valid_balanced_accuracy=0.80, valid_macro_f1=0.70)
    assert S.choose(rows, config()) is rows[0] and S.choose(rows, config(criterion="accuracy")) is rows[0]
    assert S.choose(rows, config(criterion="balanced_accuracy")) is rows[1]
    assert S.choose(rows, config(criterion="macro_f1")) is rows[0]


def test_balanced_log_loss_weighs_each_class_alike():
    probs = np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.2, 0.8, 0.0]])
    labels = np.array([0, 0, 1])  # class 2 absent: it does not count
    by_class = [-(np.log(0.9) + np.log(0.6)) / 2, -np.log(0.8)]
    f = S.valid_figures(probs, labels)
    assert f["valid_balanced_log_loss"] == pytest.approx(np.mean(by_class))
    assert f["valid_log_loss"] == pytest.approx(-(np.log(0.9) + np.log(0.6) + np.log(0.8)) / 3)
    # several labels: each label's positives and negatives weigh alike, then the labels alike
    p2 = np.array([[0.9, 0.2], [0.3, 0.6], [0.4, 0.1]])
    y2 = np.array([[1, 0], [1, 1], [0, 0]])
    label0 = (-(np.log(0.9) + np.log(0.3)) / 2 - np.log(0.6)) / 2
    label1 = (-np.log(0.6) - (np.log(0.8) + np.log(0.9)) / 2) / 2
    assert S.valid_figures(p2, y2)["valid_balanced_log_loss"] == pytest.approx((label0 + label1) / 2)
    # on a long tail judged with its classes alike, the adjustment that undoes the train priors wins
    probs, labels, priors = _long_tail()
    tau, by = S.pick_logit_adjust(probs, labels, np.log(priors), [0.0, 0.5, 1.0, 1.5, 2.0], "balanced_log_loss")
    assert tau >= 1.0 and by[tau] < by[0.0] - 0.05
    rows = [row("a", "none", 0.30, 0.90, 1.0), row("b", "none", 0.35, 0.85, 1.0)]
    rows[0].update(valid_balanced_log_loss=0.50)
    rows[1].update(valid_balanced_log_loss=0.40)
    assert S.choose(rows, config(criterion="balanced_log_loss")) is rows[1]


def test_an_adjusted_bundle_predicts_the_adjusted_probabilities(tmp_path):
    """The tau select chose travels in the bundle: the ensemble's probabilities are the adjusted
    ones (recipe.decide.select.adjusted), the plain ones are not adjusted."""
    from recipe.decide.ensemble import load_bundle, save_bundle

    torch.manual_seed(0)
    m = build_model(name="resnet18", weights=None, mean=[0.5] * 3, std=[0.25] * 3, classes=3, pool="avg",
                    dropout=0.0, init="kaiming", init_gain=1.0).eval()
    cfg = {"name": "resnet18", "weights": None, "mean": [0.5] * 3, "std": [0.25] * 3,
           "head": {"pool": "avg", "dropout": 0.0, "init": "kaiming", "init_gain": 1.0, "prior_bias": False}}
    ckpt = save_checkpoint(tmp_path / "m.pt", m, classes=["a", "b", "c"], size=32, model_config=cfg, stage="m",
                           epoch=1, channels=1)
    adjust = (1.5 * np.log([0.7, 0.2, 0.1])).tolist()
    plain, _ = load_bundle(save_bundle(tmp_path / "plain.pt", [("m", ckpt)], views=None, threshold=None, seed=0, info={}))
    model, _ = load_bundle(save_bundle(tmp_path / "adj.pt", [("m", ckpt)], views=None, threshold=None, seed=0, info={},
                                       adjust=adjust))
    x = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        p = plain(x).numpy()
        q, unadjusted = (t.numpy() for t in model.with_plain(x))
    np.testing.assert_allclose(q, S.adjusted(p, np.log([0.7, 0.2, 0.1]), 1.5), atol=1e-12)
    np.testing.assert_allclose(unadjusted, p, atol=1e-15)
    assert not np.allclose(q, p, atol=1e-3)
