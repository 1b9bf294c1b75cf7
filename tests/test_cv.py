"""Cross-validation (recipe/decide/cv.py): folds, each fold's split, label issues, the policy, the fold
ensemble; and end to end, the DVC stages on the tiny project with cv.folds: 2."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, run_cmd
from recipe.core.errors import DataError
from recipe.data import folds as folds_mod
from recipe.data.split import TARGET_PREFIX
from recipe.decide import cv
from recipe.decide import select as S
from recipe.decide.ensemble import Ensemble


def table(n_groups: int = 60, seed: int = 0) -> pd.DataFrame:
    """A split.csv: groups of 1-3 images, two labels (2:1), an extra column, every split used."""
    rng = np.random.default_rng(seed)
    rows, k = [], 0
    for g in range(n_groups):
        label = "a" if g % 3 else "b"
        extra = "mono" if g % 2 else "poly"
        split = "test" if g % 5 == 0 else ("valid" if g % 5 == 1 else "train")
        for _ in range(int(rng.integers(1, 4))):
            rows.append({"path": f"images/{k:04d}.png", "label": label, "split": split, "group": g,
                         "module_type": extra, f"{TARGET_PREFIX}b": float(label == "b")})
            k += 1
    return pd.DataFrame(rows)


def test_folds_are_disjoint_cover_train_and_valid_keep_groups_whole_and_stratify():
    t = table()
    folds = folds_mod.assign_folds(t, 4, seed=3, stratify_column="module_type")
    pool = t[t["split"] != "test"]
    assert sorted(folds["path"]) == sorted(pool["path"])  # every train and valid image once, no test image
    assert folds["path"].is_unique
    assert (folds.groupby("group")["fold"].nunique() == 1).all()  # a group never straddles two folds
    counts = folds.groupby(["label", "fold"]).size().unstack(fill_value=0)
    share = counts.sum(1) / 4
    assert (counts.sub(share, axis=0).abs().max(1) <= 3).all()  # each class within one group (<= 3 images) of its share
    assert counts.shape == (2, 4) and (counts > 0).all().all()
    again = folds_mod.assign_folds(t, 4, seed=3, stratify_column="module_type")
    assert again.equals(folds)  # seeded
    assert not folds_mod.assign_folds(t, 4, seed=4, stratify_column="module_type")["fold"].equals(folds["fold"])


def test_too_few_groups_for_the_folds_is_a_one_line_error():
    t = table(12)
    with pytest.raises(DataError, match=r"cv.folds = 8: class '[ab]' has \d duplicate group\(s\) in train \+ valid"):
        folds_mod.assign_folds(t, 8, seed=0)


def test_a_fold_split_holds_its_fold_out_of_train_and_valid():
    t = table()
    folds = folds_mod.assign_folds(t, 3, seed=0, stratify_column="module_type")
    fractions = {"train": 0.6, "valid": 0.15, "test": 0.25}
    for i in range(3):
        part = folds_mod.fold_split(t, folds, i, fractions=fractions, seed=0, stratify_column="module_type")
        held = set(folds.loc[folds["fold"] == i, "path"])
        assert set(part.loc[part["split"] == "test", "path"]) == held
        assert not held & set(part.loc[part["split"] != "test", "path"])
        assert not set(t.loc[t["split"] == "test", "path"]) & set(part["path"])  # the real test split is not in it
        inner = part[part["split"] != "test"]
        assert 0.12 < (inner["split"] == "valid").mean() < 0.3  # the main split's 0.15 : 0.6
        assert (inner.groupby("group")["split"].nunique() == 1).all()
        assert set(part.columns) == set(t.columns)  # the soft target travels


def digits_oof(flip: int, seed: int = 0):
    """Out-of-fold probabilities of a logistic regression on scikit-learn's digits (5 folds), with
    ``flip`` labels changed by hand; returns the frame recipe.decide.cv reads and the flipped rows."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(y), flip, replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.integers(1, 10, flip)) % 10
    probs = cross_val_predict(LogisticRegression(max_iter=2000), x / 16, noisy, cv=5, method="predict_proba")
    classes = [str(c) for c in range(10)]
    oof = pd.DataFrame({"path": [f"d/{i:04d}.png" for i in range(len(y))], "label": [str(c) for c in noisy],
                        "fold": np.arange(len(y)) % 5})
    for i, c in enumerate(classes):
        oof[f"p_{c}"] = probs[:, i]
    return oof, classes, set(oof["path"].iloc[flipped])


def test_planted_flipped_labels_come_first_among_the_label_issues():
    oof, classes, planted = digits_oof(30)
    issues = cv.label_issues(oof, classes)
    assert len(set(issues["path"].head(15)) & planted) >= 14  # the 15 most suspect are (nearly) all planted
    assert len(set(issues["path"]) & planted) >= 20  # and most of the 30 planted flips are flagged
    assert issues["ranking_score"].is_monotonic_increasing  # worst first
    assert (issues["rank"] == np.arange(1, len(issues) + 1)).all()
    r = issues.iloc[0]
    row = oof.set_index("path").loc[r["path"]]
    assert r["given_label"] == row["label"] and r["self_confidence"] == pytest.approx(row[f"p_{row['label']}"])
    assert r["suggested_label"] == classes[int(np.argmax([row[f"p_{c}"] for c in classes]))]


def test_the_policy_changes_train_suspects_only():
    t = table()
    issues = pd.DataFrame({"rank": [1, 2, 3], "path": [t.loc[t["split"] == "train", "path"].iloc[0],
                                                       t.loc[t["split"] == "valid", "path"].iloc[0],
                                                       t.loc[t["split"] == "train", "path"].iloc[1]],
                           "given_label": ["a", "a", "a"], "suggested_label": ["b", "b", "b"]})
    train0, valid0, train1 = issues["path"]
    same, rep = cv.apply_policy(t, issues, "report", None)
    assert same.equals(t) and list(rep["action"]) == ["kept (report)", "kept (valid)", "kept (report)"]
    dropped, rec = cv.apply_policy(t, issues, "drop", None)
    assert set(t["path"]) - set(dropped["path"]) == {train0, train1}  # the valid suspect stays
    assert list(rec["action"]) == ["dropped", "kept (valid)", "dropped"]
    capped, rec = cv.apply_policy(t, issues, "drop", 1)
    assert set(t["path"]) - set(capped["path"]) == {train0}
    assert list(rec["action"]) == ["dropped", "kept (valid)", "kept (over max_suspects)"]
    relab, rec = cv.apply_policy(t, issues, "relabel", None)
    by = relab.set_index("path")
    assert by.loc[train0, "label"] == "b" and by.loc[train0, f"{TARGET_PREFIX}b"] == 1.0  # the soft target follows
    assert by.loc[valid0, "label"] == t.set_index("path").loc[valid0, "label"]
    assert len(relab) == len(t)


def test_a_duplicate_group_with_two_labels_and_a_suspect_is_a_conflict():
    t = table()
    g = t.loc[t["split"] == "train"].groupby("group").filter(lambda x: len(x) >= 2)["group"].iloc[0]
    members = t.index[t["group"] == g]
    t.loc[members[0], "label"] = "b" if t.loc[members[1], "label"] == "a" else "a"
    issues = pd.DataFrame({"path": [t.loc[members[0], "path"]]})
    found = cv.duplicate_conflicts(t, issues)
    assert [c["group"] for c in found] == [int(g)]
    assert any(m["suspect"] for m in found[0]["members"])
    assert cv.duplicate_conflicts(t, pd.DataFrame({"path": []})) == []


def test_cv_figures_are_the_mean_and_spread_over_folds():
    oof = pd.DataFrame({"path": list("abcdef"), "label": ["x", "y"] * 3, "fold": [0, 0, 1, 1, 2, 2],
                        "p_x": [0.9, 0.2, 0.6, 0.7, 0.3, 0.4], "p_y": [0.1, 0.8, 0.4, 0.3, 0.7, 0.6]})
    f = cv.cv_figures(oof, ["x", "y"])
    assert [f["per_fold"][k]["accuracy"] for k in "012"] == [1.0, 0.5, 0.5]
    assert f["accuracy"] == pytest.approx(2 / 3) and f["accuracy_std"] == pytest.approx(np.std([1, .5, .5], ddof=1))
    assert f["pooled"]["accuracy"] == pytest.approx(4 / 6)


def test_cv_figures_give_balanced_accuracy_and_each_class_recall_out_of_fold():
    from sklearn.metrics import balanced_accuracy_score, recall_score

    rng = np.random.default_rng(0)
    labels = np.array([0] * 30 + [1] * 8 + [2] * 4)  # a long tail
    probs = rng.dirichlet(np.ones(3), len(labels)) + 0.8 * np.eye(3)[labels] * (rng.random(len(labels)) < 0.6)[:, None]
    probs /= probs.sum(1, keepdims=True)
    classes = ["a", "b", "c"]
    oof = pd.DataFrame({"path": [f"{i}.png" for i in range(len(labels))], "label": [classes[k] for k in labels],
                        "fold": np.arange(len(labels)) % 3, **{f"p_{c}": probs[:, k] for k, c in enumerate(classes)}})
    f = cv.cv_figures(oof, classes)
    pred = probs.argmax(1)
    assert f["pooled"]["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, pred))
    assert f["pooled"]["balanced_accuracy"] != pytest.approx(f["pooled"]["accuracy"])
    recall = recall_score(labels, pred, average=None)
    assert [f["pooled"]["per_class"][c]["recall"] for c in classes] == pytest.approx(recall)
    assert [f["pooled"]["per_class"][c]["support"] for c in classes] == [30, 8, 4]
    by_fold = [balanced_accuracy_score(labels[oof["fold"] == k], pred[oof["fold"] == k]) for k in range(3)]
    assert f["balanced_accuracy"] == pytest.approx(np.mean(by_fold))
    assert f["balanced_accuracy_std"] == pytest.approx(np.std(by_fold, ddof=1))


class Fixed(torch.nn.Module):
    def __init__(self, bias):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor(bias))

    def forward(self, x):
        return x.mean((1, 2, 3))[:, None] * 0 + self.bias


def test_a_fold_ensemble_of_identical_members_equals_one_member():
    x = torch.rand(5, 3, 16, 16)
    one = Ensemble([(Fixed([0.3, -0.2]), 16)], classes=["a", "b"], channels=3)
    three = Ensemble([(Fixed([0.3, -0.2]), 16) for _ in range(3)], classes=["a", "b"], channels=3)
    assert torch.allclose(one(x), three(x))
    scores = S.Scores(paths=["p0", "p1"], labels=np.array([0, 1]))
    p = np.array([[0.7, 0.3], [0.4, 0.6]])
    for m in ("cv@0", "cv@1"):
        scores.probs[(m, 16)] = {"plain": p}
    cand = S.Candidate("cv_folds", ("cv@0", "cv@1"), (("p0", "cv@0"), ("p1", "cv@1")))
    assert np.allclose(S.combine(scores, cand, 16, S.tta_views("none", scales=[1.0], crop=1.0, n=1, beta=None,
                                                                  augment=None, seed=0)), p)


def test_the_fold_ensemble_is_scored_on_valid_by_the_member_that_held_each_image_out(tmp_path):
    folds = pd.DataFrame({"path": ["p0", "p1", "p2"], "label": ["a"] * 3, "group": [0, 1, 2], "fold": [1, 0, 1]})
    folds.to_csv(tmp_path / "folds.csv", index=False)
    cand = S.fold_candidate({"cv@0": Path("m0"), "cv@1": Path("m1")}, tmp_path / "folds.csv")
    scores = S.Scores(paths=["p0", "p1", "p2"], labels=np.array([0, 0, 1]))
    scores.probs[("cv@0", 8)] = {"plain": np.array([[0.1, 0.9], [0.8, 0.2], [0.1, 0.9]])}
    scores.probs[("cv@1", 8)] = {"plain": np.array([[0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])}
    views = S.tta_views("none", scales=[1.0], crop=1.0, n=1, beta=None, augment=None, seed=0)
    got = S.combine(scores, cand, 8, views)
    # p0 and p2 from fold 1's member, p1 from fold 0's: never the mean, never a member that saw it
    assert np.allclose(got, [[0.6, 0.4], [0.8, 0.2], [0.2, 0.8]])
    assert S.fold_candidate({"cv@0": Path("m0")}, tmp_path / "folds.csv") is None


def test_out_of_fold_predictions_refuse_a_fold_model_trained_on_other_classes(tmp_path):
    """Each fold model must know the split's classes in the split's order: fold 1's, trained on
    the same names reversed, would put its probabilities in the wrong p_ columns."""
    from test_ensemble import checkpoint

    from conftest import noise_image
    from recipe.core.config import load_section, read_params
    from recipe.train.learner import Common
    from recipe.train.schema import AugmentConfig, TrainConfig

    raw = tmp_path / "raw"
    rows = []
    for i in range(4):
        noise_image(raw / "files" / f"{i}.png", i, size=40)
        rows.append({"path": f"{i}.png", "label": "ab"[i % 2], "split": "train", "group": i})
    t = pd.DataFrame(rows)
    folds = t.assign(fold=[0, 0, 1, 1])
    fold_tables = {f: t.assign(split=np.where(folds["fold"] == f, "test", "train")) for f in (0, 1)}
    params = read_params(REPO / "params.yaml")
    train = load_section("train", TrainConfig, params).model_copy(update={"workers": 1, "batch_size": 4})
    common = Common(seed=0, train=train, model=None, optim=None, augment=load_section("augment", AugmentConfig, params))
    good = {f: checkpoint(tmp_path / f"good{f}.pt", ["a", "b"], f) for f in (0, 1)}
    oof = cv.oof_predictions(common, table=t, fold_tables=fold_tables, models=good, raw=raw)
    assert list(oof["path"]) == ["0.png", "1.png", "2.png", "3.png"] and list(oof["fold"]) == [0, 0, 1, 1]
    bad = {0: good[0], 1: checkpoint(tmp_path / "bad1.pt", ["b", "a"], 1)}
    with pytest.raises(DataError, match=r"bad1\.pt: trained on classes \['b', 'a'\], the split has \['a', 'b'\]$"):
        cv.oof_predictions(common, table=t, fold_tables=fold_tables, models=bad, raw=raw)

# ---- end to end: the DVC stages on the tiny project ---------------------------------------------------------

def dvc(*args: str, cwd: Path) -> str:
    return run_cmd(sys.executable, "-m", "dvc", *args, cwd=cwd)


@pytest.fixture(scope="module")
def cv_project(tiny_project, tmp_path_factory) -> Path:
    """A copy of the session's tiny project, its outputs and cache included, rerun with two folds,
    the drop policy and the fold ensemble pinned as select's choice (only what those change reruns)."""
    proj = tmp_path_factory.mktemp("cv") / "proj"
    shutil.copytree(tiny_project, proj, symlinks=True)
    out = dvc("exp", "run", "-S", "cv.folds=2", "-S", "cv.policy=drop", "-S", "select.candidate=cv_folds", cwd=proj)
    (proj / "exp_run.log").write_text(out)
    return proj


@pytest.mark.slow
def test_the_cv_stages_run_per_fold_and_no_fold_model_sees_its_fold(cv_project):
    proj = cv_project
    log = (proj / "exp_run.log").read_text()
    for stage in ("cv_split", "cv_lr_find@0", "cv_train_head@1", "cv_finetune@0", "cv_finetune@1", "cv"):
        assert f"Running stage '{stage}'" in log
    assert "cv_resize@" not in log  # cv.stages: finetune
    assert "Running stage 'audit'" not in log  # the data stages are unchanged
    folds = pd.read_csv(proj / "outputs/cv/folds/splits/folds.csv")
    for i in (0, 1):
        held = set(folds.loc[folds["fold"] == i, "path"])
        part = pd.read_csv(proj / f"outputs/cv/folds/splits/{i}.csv")
        assert set(part.loc[part["split"] == "test", "path"]) == held
        # what the fold's stages actually read: its watched valid images, and its model's metadata
        for stage in ("train_head", "finetune"):
            seen = set(pd.read_csv(proj / f"outputs/cv/folds/{i}/{stage}/dynamics.csv")["path"])
            assert seen and not seen & held, f"fold {i}'s {stage} watched held-out images"
            m = json.loads((proj / f"outputs/cv/folds/{i}/{stage}/metrics.json").read_text())
            assert m["train_images"] == int((part["split"] == "train").sum()), m
    oof = pd.read_csv(proj / "outputs/cv/oof.csv")
    assert sorted(oof["path"]) == sorted(folds["path"])  # every train and valid image once
    assert (oof.merge(folds, on="path")["fold_x"] == oof.merge(folds, on="path")["fold_y"]).all()


@pytest.mark.slow
def test_cv_figures_reach_metrics_select_the_report_and_the_final_fit(cv_project):
    proj = cv_project
    m = json.loads((proj / "outputs/cv/metrics.json").read_text())
    assert m["folds"] == 2 and set(m["per_fold"]) == {"0", "1"}
    oof = pd.read_csv(proj / "outputs/cv/oof.csv")  # the figures from the out-of-fold predictions themselves
    right = oof["predicted"] == oof["label"]
    per_fold = [float(right[oof["fold"] == f].mean()) for f in (0, 1)]
    assert [m["per_fold"][f]["accuracy"] for f in "01"] == pytest.approx(per_fold)
    assert m["accuracy"] == pytest.approx(np.mean(per_fold))  # the mean over folds, not the pooled figure
    issues = pd.read_csv(proj / "outputs/cv/label_issues.csv")
    assert list(issues.columns) == ["rank", "path", "fold", "given_label", "suggested_label", "self_confidence",
                                    "ranking_score", "action"]
    final = pd.read_csv(proj / "outputs/cv/split.csv")
    dropped = set(issues.loc[issues["action"] == "dropped", "path"])
    assert m["policy"]["dropped"] == len(dropped) and not dropped & set(final["path"])
    head = json.loads((proj / "outputs/train_head/metrics.json").read_text())
    assert head["train_images"] == int((final["split"] == "train").sum())  # the final fit trains without them
    rows = pd.read_csv(proj / "outputs/select/candidates.csv")
    assert (rows["candidate"] == "cv_folds").sum() == 3  # one row per view set
    table = json.loads((proj / "outputs/evaluate/metrics.json").read_text())["table"]
    # the fold ensemble, chosen: evaluate's plain predictions are its members averaged, argmax
    preds = pd.read_csv(proj / "outputs/evaluate/predictions.csv")
    assert table["cv_folds"]["members"] == 2
    assert table["cv_folds"]["test_accuracy"] == pytest.approx((preds["predicted"] == preds["actual"]).mean())
    html = (proj / "outputs/evaluate/report.html").read_text()
    assert 'id="cv"' in html and 'alt="top suspected label errors" src="data:image/png' in html
    assert "2 folds over train + valid" in html
    show = dvc("exp", "show", "--no-pager", "--md", cwd=proj)
    assert "accuracy_std" in show  # dvc exp show has the cross-validated columns


@pytest.mark.slow
def test_the_fold_ensemble_when_chosen_ships_and_predict_serves_it(cv_project):
    proj = cv_project
    chosen = json.loads((proj / "outputs/select/metrics.json").read_text())["chosen"]
    assert chosen["candidate"] == "cv_folds" and chosen["members"] == ["cv@0", "cv@1"]
    bundle = torch.load(proj / "outputs/select/model.pt", map_location="cpu", weights_only=True)
    assert [m["name"] for m in bundle["members"]] == ["cv@0", "cv@1"]
    m = json.loads((proj / "outputs/evaluate/metrics.json").read_text())
    # plainly, the shipped bundle is the two fold models averaged: evaluate's cv_folds row
    assert m["test"]["accuracy"] == pytest.approx(m["table"]["cv_folds"]["test_accuracy"])
    preds = pd.read_csv(proj / "outputs/evaluate/predictions.csv").head(3)
    out = run_cmd(sys.executable, "-m", "recipe.ship.predict", "--model", "outputs/select/model.pt",
                  *[f"data/raw/files/{p}" for p in preds["path"]], cwd=proj)
    lines = [line.split("\t") for line in out.strip().splitlines() if line.startswith("data/raw/files/")]
    assert [line[1] for line in lines] == list(preds["predicted_chosen"])
    assert np.allclose([float(line[2]) for line in lines], preds["probability_chosen"], atol=2e-3)
    exported = json.loads((proj / "outputs/export/metrics.json").read_text())  # exported and checked on test
    assert exported["candidate"] == "cv_folds" and exported["members"] == ["cv@0", "cv@1"]
    preds = pd.read_csv(proj / "outputs/evaluate/predictions.csv")
    assert exported["parity"]["images"] == len(preds) and exported["parity"]["onnx_class_mismatches"] == 0
    as_chosen = (preds["predicted_chosen"] == preds["actual"]).mean()  # the ONNX graph decides as evaluate did
    assert exported["test_accuracy"]["onnx"] == exported["test_accuracy"]["checkpoint"] == pytest.approx(as_chosen)
