"""Several labels per image (data.task: multi_label), as far as ingest, audit and split take them:
label lists read from a CSV column, counted per label by the audit, split by iterative
stratification with every label in every split; trained with a sigmoid per label, chosen with a
threshold per label, scored, exported and predicted with their label sets; cross-validated with
cleanlab's multi-label label issues."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import noise_image
from recipe.core.errors import ConfigError, DataError
from recipe.data.audit import audit
from recipe.data.sources import ingest
from recipe.data.split import LABELS, iterative_stratification, leaking_groups, read_split, split
from recipe.report import plots

CSV = {"labels_file": "labels.csv", "image_dir": "train", "fname_col": "name", "label_col": "tags", "suffix": ".png"}
AUDIT = dict(drop_exact_duplicates=True, conflicting_labels="drop", near_dup_bits=0, max_pixels=10**8, min_side=8,
             too_small="drop", size_outlier_factor=10.0, size_outliers="keep", min_per_class=3, stats_max_side=64,
             workers=1)
FRACTIONS = {"train": 0.6, "valid": 0.15, "test": 0.25}


def planet(root, tags: dict[str, str]):
    """fastai's planet layout: ``root/labels.csv`` (name, tags) and ``root/train/<name>.png``."""
    for i, name in enumerate(tags):
        noise_image(root / "train" / f"{name}.png", i)
    pd.DataFrame({"name": list(tags), "tags": list(tags.values())}).to_csv(root / "labels.csv", index=False)
    return root


def read_index(raw):
    return pd.read_csv(raw / "index.csv", keep_default_na=False, dtype=str).set_index("path")


def test_label_lists_are_read_sorted_and_an_empty_list_is_kept(tmp_path):
    root = planet(tmp_path / "ds", {"a": "haze clear clear", "b": "", "c": "water", "d": "clear"})
    summary = ingest(source="csv", task="multi_label", label_delim=" ", out=tmp_path / "raw", seed=0, limit=None,
                     path=str(root), **CSV)
    index = read_index(tmp_path / "raw")
    assert index.loc["a.png", "label"] == "clear haze"  # duplicates out, sorted, one space between
    assert index.loc["b.png", "label"] == "" and index.loc["b.png", "ingest_issue"] == ""  # none of the labels: kept
    assert summary["classes"] == ["clear", "haze", "water"] and summary["task"] == "multi_label"
    assert len(list((tmp_path / "raw" / "files").iterdir())) == 4

    other = planet(tmp_path / "ds2", {"a": "cloudy sky,sea", "b": ",,sea,"})  # a label with a space
    with pytest.raises(DataError, match=r"^data.label_delim = ',': the label 'cloudy sky' holds white space"):
        ingest(source="csv", task="multi_label", label_delim=",", out=tmp_path / "raw2", seed=0, limit=None,
               path=str(other), **CSV)
    comma = planet(tmp_path / "ds3", {"a": "sky,sea", "b": ",,sea,"})
    ingest(source="csv", task="multi_label", label_delim=",", out=tmp_path / "raw3", seed=0, limit=None,
           path=str(comma), **CSV)
    assert read_index(tmp_path / "raw3")["label"].to_dict() == {"a.png": "sea sky", "b.png": "sea"}


def test_what_cannot_be_several_labels_is_a_one_line_error(tmp_path):
    folder = tmp_path / "folder" / "cat"
    noise_image(folder / "x.png", 0)
    with pytest.raises(ConfigError, match=r"^data.task = 'multi_label': a folder source gives each image one label"):
        ingest(source="folder", task="multi_label", out=tmp_path / "raw", seed=0, limit=None, path=str(folder.parent))
    root = planet(tmp_path / "ds", {"a": "", "b": "  "})
    with pytest.raises(DataError, match=r"^data.label_col = 'tags': no row of labels.csv holds a label once split on "
                                        r"data.label_delim = ' '$"):
        ingest(source="csv", task="multi_label", label_delim=" ", out=tmp_path / "raw", seed=0, limit=None,
               path=str(root), **CSV)
    with pytest.raises(ConfigError, match=r"^data.label_col = 'labels': no such column in labels.csv"):
        ingest(source="csv", task="multi_label", label_delim=" ", out=tmp_path / "raw", seed=0, limit=None,
               path=str(root), **{**CSV, "label_col": "labels"})


def test_the_audit_counts_images_per_label_and_labels_per_image(tmp_path):
    root = planet(tmp_path / "ds", {"a": "sea sky", "b": "sky", "c": "", "d": "sea sky boat", "e": "sky"})
    shutil.copy(root / "train" / "a.png", root / "train" / "f.png")  # a copy of a with another label list
    pd.concat([pd.read_csv(root / "labels.csv"), pd.DataFrame({"name": ["f"], "tags": ["sea"]})]).to_csv(
        root / "labels.csv", index=False)
    ingest(source="csv", task="multi_label", label_delim=" ", out=tmp_path / "raw", seed=0, limit=None,
           path=str(root), **CSV)
    manifest, report = audit(raw=tmp_path / "raw", **AUDIT)
    issues = manifest.set_index("path")["issues"]
    assert "conflicting_label" in issues["a.png"] and "conflicting_label" in issues["f.png"]  # dropped, both
    assert report["classes"] == {"boat": 1, "sea": 1, "sky": 3}  # images holding each label, a and f out
    assert report["labels_per_image"] == {"0": 1, "1": 2, "3": 1} and report["images_without_labels"] == 1
    assert report["num_classes"] == 3 and report["task"] == "multi_label"
    plots.audit_pictures(manifest, report, files=tmp_path / "raw" / "files", out=tmp_path / "plots", seed=0,
                         per_class=2, max_groups=2)
    assert (tmp_path / "plots" / "cooccurrence.png").stat().st_size > 0


def test_iterative_stratification_places_each_labels_units_apart():
    """Two labels, two units each, two equal splits: each split gets one unit of each label (a
    random split puts both units of a label together half the time)."""
    counts = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    for seed in range(5):
        place = iterative_stratification(counts, np.ones(4, int), np.array([0.5, 0.5]), np.random.default_rng(seed))
        assert sorted(place[:2]) == [0, 1] and sorted(place[2:]) == [0, 1]
    # a unit holds both labels: whichever split it lands in, the other gets the other unit of each
    # label (filling by size alone, the b-only unit follows the first free space, beside it)
    counts = np.array([[1, 1], [1, 0], [0, 1], [0, 0]])
    for seed in range(8):
        place = iterative_stratification(counts, np.ones(4, int), np.array([0.5, 0.5]), np.random.default_rng(seed))
        assert place[1] != place[0] and place[2] != place[0] and place[3] == place[0], (seed, place)


def multi_manifest() -> pd.DataFrame:
    """60 images: common labels a (about half), b (a third), c (a fifth), a rare label r on three
    images (iterative stratification alone gives valid none: 0.15 x 3 is the least want), a rarer
    q on two, a near-duplicate pair (one group), and some images with no label."""
    rng = np.random.default_rng(3)
    rows = []
    for i in range(60):
        tags = [t for t, p in (("a", 0.5), ("b", 0.33), ("c", 0.2)) if rng.random() < p]
        rows.append({"path": f"{i:02d}.png", "tags": tags, "group": i})
    for i in (0, 1, 2):
        rows[10 * i + 5]["tags"] = rows[10 * i + 5]["tags"] + ["r"]
    rows[31]["tags"] = rows[30]["tags"]
    rows[31]["group"] = rows[30]["group"]  # a near duplicate of row 30: one group of two
    for i in (40, 50):
        rows[i]["tags"] = rows[i]["tags"] + ["q"]
    return pd.DataFrame([{"path": r["path"], "label": " ".join(sorted(r["tags"])), "keep": True, "group": r["group"]}
                         for r in rows])


def test_the_multi_label_split_keeps_every_label_in_every_split_and_groups_whole():
    table, summary = split(manifest=multi_manifest(), fractions=FRACTIONS, stratify=True, seed=0, task="multi_label")
    assert LABELS in table.columns and "label" not in table.columns
    assert leaking_groups(table) == 0 and summary["leaking_groups"] == 0
    assert table.loc[table["path"] == "30.png", "split"].item() == table.loc[table["path"] == "31.png", "split"].item()
    for label in "abcr":  # every label with a group for each split is in every split
        assert all(summary["counts"][s][label] > 0 for s in FRACTIONS), (label, summary["counts"])
    assert summary["labels_not_in_every_split"] == ["q"]  # two groups cannot reach three splits
    for label in "ab":  # the common labels keep their shares within a few images
        total = sum(summary["counts"][s][label] for s in FRACTIONS)
        for s, f in FRACTIONS.items():
            assert abs(summary["counts"][s][label] - f * total) <= 2, (label, s, summary["counts"])
    assert abs(summary["fractions_actual"]["train"] - 0.6) < 0.05
    assert summary["images_without_labels"]["train"] + summary["images_without_labels"]["valid"] \
        + summary["images_without_labels"]["test"] == int((multi_manifest()["label"] == "").sum())
    again, _ = split(manifest=multi_manifest(), fractions=FRACTIONS, stratify=True, seed=0, task="multi_label")
    assert again.equals(table)  # the same seed, the same split


def test_cross_validation_folds_keep_every_label_in_every_fold_and_flag_a_wrong_list(tmp_path):
    """Several labels per image in cross-validation: the folds of train + valid by iterative
    stratification (whole groups, every label with a group per fold in every fold), each fold's
    split held out as its test and re-split into train and valid with the lists kept; the
    out-of-fold figures per label; cleanlab's multi-label confident learning flags a planted
    wrong list and suggests the labels the model sees."""
    from recipe.data.folds import assign_folds, fold_split
    from recipe.decide import cv

    table, _ = split(manifest=multi_manifest(), fractions=FRACTIONS, stratify=True, seed=0, task="multi_label")
    table.to_csv(tmp_path / "split.csv", index=False)
    table = read_split(tmp_path / "split.csv")
    assert table[LABELS].tolist() == split(manifest=multi_manifest(), fractions=FRACTIONS, stratify=True, seed=0,
                                           task="multi_label")[0][LABELS].tolist()
    folds = assign_folds(table, 3, seed=0)
    cv_rows = table[table["split"].isin(["train", "valid"])]
    assert sorted(folds["path"]) == sorted(cv_rows["path"]) and set(folds["fold"]) == {0, 1, 2}
    assert folds.groupby("group")["fold"].nunique().max() == 1  # the near-duplicate pair in one fold
    for label in "abc":
        held = [sum(label in v.split() for v in folds.loc[folds["fold"] == f, LABELS]) for f in range(3)]
        assert min(held) > 0 and max(held) - min(held) <= 2, (label, held)
    part = fold_split(table, folds, 1, fractions=FRACTIONS, seed=0)
    assert LABELS in part.columns and set(part["split"]) == {"train", "valid", "test"}
    assert set(part.loc[part["split"] == "test", "path"]) == set(folds.loc[folds["fold"] == 1, "path"])
    assert dict(zip(part["path"], part[LABELS])) == dict(zip(cv_rows["path"], cv_rows[LABELS]))

    classes = ["a", "b", "c", "q", "r"]
    hot = np.array([[c in v.split() for c in classes] for v in cv_rows[LABELS]], dtype=float)
    probs = np.clip(0.9 * hot + 0.05, 0, 1)  # a model that agrees with every list ...
    wrong = int(np.flatnonzero(hot[:, 0] == 1)[0])
    probs[wrong, 0] = 0.02  # ... but one: it is sure label a is not there
    oof = pd.DataFrame({"path": cv_rows["path"].to_numpy(), "label": cv_rows[LABELS].to_numpy(),
                        "fold": cv_rows["path"].map(dict(zip(folds["path"], folds["fold"]))).to_numpy()})
    for i, c in enumerate(classes):
        oof[f"p_{c}"] = probs[:, i]
    figures = cv.cv_figures(oof, classes, multi_label=True)
    assert set(figures["per_fold"]) == {"0", "1", "2"} and 0.95 < figures["pooled"]["accuracy"] < 1
    assert "macro_ap" in figures["pooled"]
    issues = cv.label_issues(oof, classes, multi_label=True)
    assert issues["path"].iloc[0] == oof["path"].iloc[wrong]  # the planted list ranks first
    assert issues["given_label"].iloc[0] == oof["label"].iloc[wrong]
    assert issues["suggested_label"].iloc[0] == " ".join(t for t in oof["label"].iloc[wrong].split() if t != "a")
    fixed, acted = cv.apply_policy(table, issues.head(1), "relabel", None)
    if table.loc[table["path"] == issues["path"].iloc[0], "split"].item() == "train":
        assert fixed.loc[fixed["path"] == issues["path"].iloc[0], LABELS].item() == issues["suggested_label"].iloc[0]
    assert json.dumps(split(manifest=multi_manifest(), fractions=FRACTIONS, stratify=True, seed=0,
                            task="multi_label", stratify_column="site")[1]["ignored"]) \
        == '{"stratify_column": "ignored: stratify_column applies to one label per image"}'


@pytest.mark.slow
def test_multi_label_digits_through_every_stage_to_the_same_label_sets_everywhere(tmp_path):
    """120 canvases of one to three digits (recipe.data.digits --multi-label) through the real
    `dvc repro` with the tiny experiment, overriding only the source, the path, the label column
    and the task (and two folds of cross-validation): every stage to resize trains on the label
    lists (binary cross-entropy, one sigmoid per label), the folds give each label's out-of-fold
    sigmoid and cleanlab's multi-label issues, select ships a bundle with a threshold per label
    (the fold models one of its candidates), evaluate scores it with
    the labels' mAP and a row per label, export puts the thresholds in the ONNX graph, and
    `predict --csv` gives the same label sets from the bundle, the ONNX file and the MLflow model."""
    import mlflow
    import torch

    from conftest import copy_project, run_cmd
    from recipe.core.compose import compose
    from recipe.data.digits import write_multi_digits
    from recipe.ship.onnx_model import OnnxModel

    write_multi_digits(tmp_path / "data", 120)
    proj = copy_project(tmp_path / "proj")
    compose(proj, ["experiment=tiny", "data=csv", f"data.path={tmp_path / 'data'}", "data.label_col=tags",
                   "data.task=multi_label", "data.limit=null", "cv.folds=2"], proj / "params.yaml")
    run_cmd("git", "add", "-A", cwd=proj)
    run_cmd("git", "commit", "-qm", "multi-label digits", cwd=proj)
    out = run_cmd("python", "-m", "dvc", "repro", cwd=proj)
    assert "ingest: 120 entries from csv into data/raw (10 classes)" in out
    report = json.loads((proj / "outputs/audit/report.json").read_text())
    assert report["task"] == "multi_label" and set(report["labels_per_image"]) <= {"1", "2", "3"}
    split_metrics = json.loads((proj / "outputs/split/metrics.json").read_text())
    assert split_metrics["task"] == "multi_label" and split_metrics["leaking_groups"] == 0
    baseline = json.loads((proj / "outputs/baseline/metrics.json").read_text())
    assert baseline["majority_class"] == "each label's prior" and 0 < baseline["prior_valid_loss"] < 0.7
    # with the prior bias every sigmoid starts at its label's frequency: the loss at init is their entropy
    assert abs(baseline["checks"]["init_loss"]["value"] - baseline["prior_entropy"]) < 0.1
    model_state = torch.load(proj / "outputs/finetune/model.pt", weights_only=True)
    assert model_state["classes"] == [str(d) for d in range(10)]
    history = pd.read_csv(proj / "outputs/train_head/history.csv")
    assert history["valid_loss"].between(0, 0.7).all()  # binary cross-entropy per label, not a 10-way one (ln 10)
    cv_metrics = json.loads((proj / "outputs/cv/metrics.json").read_text())
    assert cv_metrics["folds"] == 2 and set(cv_metrics["per_fold"]) == {"0", "1"} and "macro_ap" in cv_metrics["pooled"]
    oof = pd.read_csv(proj / "outputs/cv/oof.csv", keep_default_na=False, dtype=str)
    split_table = pd.read_csv(proj / "outputs/split/split.csv", keep_default_na=False, dtype=str)
    cv_part = split_table[split_table["split"].isin(["train", "valid"])]
    assert dict(zip(oof["path"], oof["label"])) == dict(zip(cv_part["path"], cv_part["labels"]))  # the lists, out of fold
    assert pd.read_csv(proj / "outputs/cv/label_issues.csv").columns[0] == "rank"
    candidates = pd.read_csv(proj / "outputs/select/candidates.csv")
    assert "cv_folds" in set(candidates["candidate"])
    chosen = json.loads((proj / "outputs/select/metrics.json").read_text())["chosen"]
    assert len(chosen["threshold"]) == 10 and chosen["threshold_rule"] in ("per_label", "shared")
    assert 0 <= chosen["valid_macro_f1_as_chosen"] <= 1 and "valid_macro_ap" in chosen
    from recipe.decide.ensemble import load_bundle

    model, meta = load_bundle(proj / "outputs/select/model.pt")
    assert model.multi_label and meta["multi_label"] and meta["threshold"] == chosen["threshold"]
    with torch.no_grad():
        p = model(torch.rand(3, 1, model.size, model.size))
    assert p.shape == (3, 10) and not torch.allclose(p.sum(1), torch.ones(3, dtype=p.dtype))  # sigmoids, not a softmax

    # evaluate: the labels' figures, each label's row, the decisions at each label's threshold
    m = json.loads((proj / "outputs/evaluate/metrics.json").read_text())
    test = m["test_chosen"]
    assert {"macro_ap", "micro_ap", "micro_f1", "macro_f1", "exact_match", "hamming_loss"} <= set(test)
    assert set(test["per_class"]) == {str(d) for d in range(10)} and "ap" in test["per_class"]["3"]
    assert abs(test["accuracy"] + test["hamming_loss"] - 1) < 1e-9
    predictions = pd.read_csv(proj / "outputs/evaluate/predictions.csv", keep_default_na=False, dtype=str)
    probs = predictions[[f"p_{d}" for d in range(10)]].astype(float).to_numpy()
    cut = np.asarray(chosen["threshold"])
    decided = [" ".join(str(d) for d in range(10) if row[d] >= cut[d]) for row in probs]
    assert list(predictions["predicted_chosen"]) == decided  # each label at its own threshold
    assert m["table"]["chosen"]["test_accuracy"] == test["accuracy"]
    assert 0 < m["table"]["cv_folds"]["test_accuracy"] <= 1 and m["table"]["cv_folds"]["members"] == 2
    assert len(m["confusion"]["chosen"]) == 10 and np.asarray(m["confusion"]["chosen"]).shape == (10, 2, 2)
    page = (proj / "outputs/evaluate/report.html").read_text()
    assert "macro mAP" in page and "AP (chosen)" in page and "valid macro AP" in page

    # export: the thresholds inside the graph, the decisions equal to evaluate's
    ex = json.loads((proj / "outputs/export/metrics.json").read_text())
    assert ex["parity"]["onnx_class_mismatches"] == 0 and ex["parity"]["reference"] == "evaluate"
    onnx = OnnxModel(proj / "outputs/export/model.onnx")
    assert onnx.multi_label and onnx.threshold == chosen["threshold"]

    # predict --csv from the bundle, the ONNX graph and the MLflow model: the same label sets
    files = [str(proj / "data/raw/files" / p) for p in predictions["path"][:6]]
    runs = {}
    for name, source in (("bundle", "outputs/select/model.pt"), ("onnx", "outputs/export/model.onnx")):
        run_cmd("python", "-m", "recipe.ship.predict", *files, "--model", source, "--csv", str(tmp_path / f"{name}.csv"),
                cwd=proj)
        runs[name] = pd.read_csv(tmp_path / f"{name}.csv", keep_default_na=False, dtype=str)
    mlflow.set_tracking_uri(f"sqlite:///{proj}/mlflow.db")
    try:
        uri = mlflow.get_run(mlflow.search_runs(search_all_experiments=True, filter_string="tags.mlflow.runName = "
                                                "'evaluate'", output_format="list")[0].info.run_id).data.tags["model_uri"]
        served = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"image": [open(f, "rb").read() for f in files]}))
    finally:
        mlflow.set_tracking_uri(None)
    assert list(runs["bundle"].columns) == ["path", "prediction", *[str(d) for d in range(10)]]
    assert list(runs["bundle"]["prediction"]) == list(runs["onnx"]["prediction"]) == list(served["predicted"]) \
        == decided[:6]
    np.testing.assert_allclose(runs["onnx"][[str(d) for d in range(10)]].astype(float), probs[:6], atol=1e-4)


def test_several_labels_train_one_sigmoid_each_from_their_log_odds(params):
    import torch

    from recipe.core.config import StageParams
    from recipe.data.loader import ImageSet
    from recipe.train.learner import MultiLabelLoss
    from recipe.train.session import new_model
    from stages._training import common_config

    common = common_config(StageParams("test", ["seed", "train", "model", "optim", "augment"], params))
    model = new_model(common.model.model_copy(update={"name": "resnet18", "weights": None}), ["a", "b", "c"],
                      [0.5, 0.1, 0.9], multi_label=True)
    assert torch.allclose(model.head.fc.bias, torch.tensor([0.0, -2.1972246, 2.1972246]), atol=1e-6)
    logits, targets = torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([[1.0, 0.0, 1.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert torch.isclose(common.loss(multi_label=True)(logits, targets), bce)
    assert torch.isclose(MultiLabelLoss(0.2)(logits, targets),
                         torch.nn.functional.binary_cross_entropy_with_logits(logits, targets * 0.8 + 0.1))
    balanced = common.__class__(**{**common.__dict__, "train": common.train.model_copy(
        update={"class_weights": "balanced", "sampler": "balanced"})})
    with pytest.raises(ConfigError, match=r"^train.class_weights = 'balanced': it weighs classes that exclude each other"):
        balanced.loss(multi_label=True)
    images = ImageSet(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), targets.expand(2, -1), ["x", "y"], ["a", "b", "c"])
    with pytest.raises(ConfigError, match=r"^train.sampler = 'balanced': it draws classes that exclude each other"):
        balanced.balance(images)


def test_label_thresholds_find_known_answers_on_hand_made_probabilities():
    from recipe.decide.select import label_thresholds, pick_label_thresholds

    probs = np.array([[0.40, 0.9], [0.35, 0.7], [0.10, 0.6], [0.05, 0.1]])
    labels = np.array([[1, 1], [1, 0], [0, 0], [0, 0]])
    # label 0's positives sit under 0.5: its best cut is the midpoint 0.225; label 1's lone positive: 0.8
    assert label_thresholds(probs, labels, "per_label") == pytest.approx([0.225, 0.8])
    (shared, again) = label_thresholds(probs, labels, "shared")
    assert shared == again and 0.1 < shared <= 0.35  # where the macro F1 peaks at (1 + 1/2) / 2
    assert pick_label_thresholds(probs, labels, 0.3, seed=0)[:2] == ([0.3, 0.3], "0.3")

    rng = np.random.default_rng(0)
    y = rng.random((400, 2)) < 0.3
    # label 0 is told apart around 0.15, label 1 around 0.8: one shared cut cannot serve both
    p = np.where(y, [0.2, 0.9], [0.1, 0.7]) + rng.normal(0, 0.02, (400, 2))
    cuts, rule, held = pick_label_thresholds(p, y.astype(int), "auto", seed=0)
    assert rule == "per_label" and held["per_label"] > held["shared"] + 0.2
    assert 0.1 < cuts[0] < 0.2 and 0.7 < cuts[1] < 0.9
    same = np.where(y, 0.9, 0.1) + rng.normal(0, 0.02, (400, 2))  # both labels alike: the fewer numbers win
    assert pick_label_thresholds(same, y.astype(int), "auto", seed=0)[1] == "shared"


def test_multi_label_metrics_match_scikit_learn():
    from sklearn.metrics import average_precision_score, f1_score, hamming_loss, log_loss
    from sklearn.utils.class_weight import compute_sample_weight

    from recipe.core.metrics import balanced_binary_log_loss, multi_label_metrics

    rng = np.random.default_rng(1)
    y = (rng.random((50, 4)) < 0.4).astype(int)
    p = np.clip(0.6 * y + 0.5 * rng.random((50, 4)), 0, 1)
    m = multi_label_metrics(p, y, list("abcd"), [0.5, 0.4, 0.6, 0.5])
    pred = (p >= [0.5, 0.4, 0.6, 0.5]).astype(int)
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["micro_f1"] == pytest.approx(f1_score(y, pred, average="micro"))
    assert m["hamming_loss"] == pytest.approx(hamming_loss(y, pred))
    assert m["exact_match"] == pytest.approx((pred == y).all(1).mean())
    assert m["macro_ap"] == pytest.approx(average_precision_score(y, p, average="macro"))
    assert m["micro_ap"] == pytest.approx(average_precision_score(y, p, average="micro"))
    assert m["log_loss"] == pytest.approx(np.mean([log_loss(y[:, k], p[:, k], labels=[0, 1]) for k in range(4)]))
    # each label's positives and negatives weighed alike (scikit-learn's "balanced" sample weights)
    balanced = [log_loss(y[:, k], p[:, k], labels=[0, 1], sample_weight=compute_sample_weight("balanced", y[:, k]))
                for k in range(4)]
    assert m["balanced_log_loss"] == pytest.approx(np.mean(balanced))
    # a soft label of exactly 0.5 is a "no", as the counts of every other figure have it
    assert balanced_binary_log_loss(p, np.where(y == 0, 0.5, y)) == pytest.approx(m["balanced_log_loss"])
    assert m["per_class"]["b"]["support"] == int(y[:, 1].sum())


def test_the_onnx_graph_applies_each_labels_own_threshold(tmp_path, capsys):
    """A model of several labels exported: its graph gives each label's sigmoid and decides each
    label at its own threshold (listed in the metadata), as the bundle decides; predict writes the
    labels decided, joined by a space."""
    import torch

    from recipe.decide.ensemble import Ensemble
    from recipe.ship import export as E
    from recipe.ship.onnx_model import OnnxModel
    from recipe.ship.predict import decided_names, main
    from recipe.train.models import build_model

    torch.manual_seed(0)
    net = build_model(name="resnet18", weights=None, mean=[0.5] * 3, std=[0.25] * 3, classes=4, pool="avg",
                      dropout=0.0, init="kaiming", init_gain=1.0).eval()
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        p = net(x).sigmoid().double().numpy()
    cut = [float(v) for v in np.median(p, 0)]  # each label's own: about half the images over it
    model = Ensemble([(net, 32)], classes=["a", "b", "c", "d"], channels=3, threshold=cut, multi_label=True).eval()
    path = E.export_onnx(model, tmp_path / "model.onnx", opset=18, dynamic_batch=True, optimize=False)
    onnx = OnnxModel(path)
    probs, decided = onnx.run(x.numpy())
    assert onnx.multi_label and onnx.threshold == cut and decided.shape == (6, 4)
    np.testing.assert_allclose(probs, p, atol=1e-5)
    assert (decided == (p >= np.asarray(cut))).all() and (decided == model.decide(p)).all()
    assert 0 < decided.sum() < decided.size  # neither every label nor none: the thresholds are each label's
    assert decided_names(model, [[1, 0, 1, 0], [0, 0, 0, 0]]) == ["a c", ""]
    png = noise_image(tmp_path / "one.png", 1, size=40)
    assert main([str(png), "--model", str(path), "--csv", str(tmp_path / "out.csv")]) == 0
    out = pd.read_csv(tmp_path / "out.csv", keep_default_na=False, dtype=str)
    assert list(out.columns) == ["path", "prediction", "a", "b", "c", "d"]
    assert set(out["prediction"][0].split()) <= {"a", "b", "c", "d"}
    row = out[["a", "b", "c", "d"]].astype(float).to_numpy()[0]
    assert out["prediction"][0] == " ".join(c for c, v, t in zip("abcd", row, cut) if v >= t)
