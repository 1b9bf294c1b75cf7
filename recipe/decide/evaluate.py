"""evaluate: the model select chose, on the test split, once plainly and once as chosen; the stage table.

Contract: :func:`run` scores select's bundle (:mod:`recipe.decide.ensemble`: one or more members, a
view set, a threshold) on the test split twice: plainly (its members averaged, no TTA, argmax)
and as chosen (with its views and threshold). It computes the metrics (:mod:`recipe.core.metrics`),
writes the predictions, the confusion matrix, the top losses and the per-class gain of the
choices, and builds the fast.ai lesson's table: accuracy after every stage, valid (as each stage
reported it) and test. The test split is read here and nowhere before; nothing is chosen on it.
Several labels per image (the bundle's ``multi_label``): each label's sigmoid, decided at 0.5
plainly and at its own threshold as chosen, scored by :func:`recipe.core.metrics.multi_label_metrics`
(mAP, F1, exact match, Hamming loss, a row per label); each label's 2x2 confusion and its most
confident mistakes take the confusion matrix's and the top losses' places, and the stage table's
accuracy is the share of right yes/no answers.
Nothing here talks to MLflow (``stages/evaluate.py`` logs).
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

from recipe.core.errors import DataError
from recipe.core.layout import BASELINE, EVALUATE, RAW, TRAINING, TRAINING_STAGES
from recipe.core.metrics import (
    classification_metrics,
    label_confusion,
    label_errors,
    label_mistakes,
    most_confused,
    multi_label_metrics,
    top_losses,
)
from recipe.data.loader import ImageSet, load_split
from recipe.data.split import LABELS, class_names, read_split
from recipe.decide.engine import runner
from recipe.decide.ensemble import Ensemble, decide, load_bundle
from recipe.decide.fold import fold_ensemble, fold_member
from recipe.decide.labels import hot, joined, threshold_text
from recipe.decide.schema import EvaluateConfig, ScoringConfig
from recipe.decide.tta import plain_views, predict
from recipe.report import plots
from recipe.train.fit import autocast
from recipe.train.learner import Common
from recipe.train.session import load_checkpoint


def probabilities(model: Ensemble, images: ImageSet, common: Common, device) -> tuple[np.ndarray, np.ndarray]:
    """The ensemble's probabilities (float64) over ``images`` and their labels."""
    p, _, labels = probabilities_with_plain(model, images, common, device)
    return p, labels


def probabilities_with_plain(model: Ensemble, images: ImageSet, common: Common,
                             device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ensemble's probabilities (float64) over ``images`` with its views and plainly (from the
    same pass: the plain view is the first of every member's), and their labels."""
    model.autocast = lambda: autocast(device, common.train.amp)
    out, plain, labels = [], [], []
    with torch.no_grad():
        for x, y in common.batches(images, device, train=False):
            p, q = model.with_plain(x)
            out.append(p.cpu().numpy())
            plain.append(q.cpu().numpy())
            labels.append(y.cpu().numpy())
    model.autocast = None
    return np.concatenate(out), np.concatenate(plain), np.concatenate(labels)


def _scores(model: Ensemble, test: ImageSet, common: Common, cfg: EvaluateConfig, device,
            classes: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict, dict]:
    """The probabilities as chosen and plainly, the labels, and the metrics plainly and as chosen."""
    p_chosen, p_plain, labels = probabilities_with_plain(model, test, common, device)
    if model.multi_label:  # each label's sigmoid: at 0.5 plainly, at its own threshold as chosen
        cut = 0.5 if model.threshold is None else model.threshold
        plain, chosen = (multi_label_metrics(p, labels, classes, t) for p, t in ((p_plain, 0.5), (p_chosen, cut)))
        plain["confusion"] = label_confusion(p_plain >= 0.5, labels)
        chosen["confusion"] = label_confusion(decide(p_chosen, cut, multi_label=True), labels)
        return p_chosen, p_plain, labels, plain, chosen
    kw = dict(ece_bins=cfg.metrics.ece_bins, top_k=cfg.metrics.top_k, bootstrap=cfg.metrics.bootstrap,
              confidence=cfg.metrics.confidence, seed=common.seed)
    plain = classification_metrics(p_plain, labels, classes, **kw)
    chosen = classification_metrics(p_chosen, labels, classes, predicted=decide(p_chosen, model.threshold), **kw)
    return p_chosen, p_plain, labels, plain, chosen


def _scorers(model: Ensemble, images: int, scoring: ScoringConfig, device) -> Ensemble:
    """``model`` with each member run as ``scoring`` says for a pass over ``images`` images with its views."""
    for i, member in enumerate(model.members):
        model.members[i] = runner(member, scoring, device=device, images=images * len(model.views),
                                  side=model.sizes[i], name=model.names[i])
    return model


def _stage_row(path: Path, checkpoints: dict[str, Path], stage: str, cfg: EvaluateConfig, accuracy_of) -> dict:
    """One training stage's row of the table: its size, its valid accuracy as it reported it, its checkpoint's test accuracy."""
    stage_m = json.loads(path.read_text())
    row = {"size": stage_m.get("size"), "valid_accuracy": stage_m.get("valid_accuracy"), "test_accuracy": None}
    if stage_m.get("fit_on", "train") != "train":  # the valid images were trained on: not a held-out figure
        row.update(valid_accuracy=None, fit_on=stage_m["fit_on"])
    if stage_m.get("passed_on"):
        row["passed_on"] = stage_m["passed_on"]
    if cfg.stage_table and Path(checkpoints[stage]).is_file():
        row["test_accuracy"] = accuracy_of(stage, checkpoints[stage])
    return row


def _test_accuracy(checkpoint: Path, common: Common, device, test_at, amp, scoring: ScoringConfig) -> float:
    """A checkpoint's plain test accuracy (argmax, no views), at its own size; with several labels
    per image, the share of right yes/no answers at 0.5."""
    other, other_meta = load_checkpoint(checkpoint)
    other = fold_member(common.prepare(other, device), channels=other_meta.get("channels", 3),
                        size=other_meta["size"])[0]
    test = test_at(other_meta["size"])
    other = runner(other, scoring, device=device, images=len(test), side=other_meta["size"],
                   name=Path(checkpoint).parent.name)
    multi = bool(other_meta.get("multi_label"))
    p = predict(other, common.batches(test, device, train=False), plain_views(), autocast=amp, multi_label=multi)
    if multi:
        return float(((p["plain"] >= 0.5).double() == p["labels"]).double().mean())
    return float((p["plain"].argmax(1) == p["labels"]).double().mean())


def _folds_row(fold_models: list[Path], classes: list[str], common: Common, device, test_at,
               scoring: ScoringConfig) -> dict:
    """The cv_folds row of the table: the k fold models averaged (select's cv_folds), scored on test."""
    folds = [load_checkpoint(f) for f in fold_models]
    multi = bool(folds[0][1].get("multi_label"))
    ens = fold_ensemble(common.prepare(Ensemble([(m, meta_["size"]) for m, meta_ in folds], classes=classes,
                                                channels=folds[0][1].get("channels", 3), multi_label=multi), device))[0]
    test = test_at(ens.size)
    p, y = probabilities(_scorers(ens, len(test), scoring, device), test, common, device)
    right = (p >= 0.5) == y if multi else p.argmax(1) == y  # several labels: the right yes/no answers at 0.5
    return {"size": ens.size, "valid_accuracy": None, "test_accuracy": float(right.mean()), "members": len(folds)}


def _stage_table(cfg: EvaluateConfig, common: Common, device, test_at, *, baseline_metrics: Path, classes: list[str],
                 labels: np.ndarray, stage_metrics: dict[str, Path], checkpoints: dict[str, Path],
                 fold_models: list[Path], size: int, info: dict, plain: dict, chosen: dict,
                 known: dict[str, float], scoring: ScoringConfig, priors=None) -> dict[str, dict]:
    """The fast.ai lesson's table, one row per stage: accuracy after every stage, valid (as each
    stage reported it) and test (each checkpoint scored here, plainly; ``known``: the test accuracy
    of a checkpoint already scored plainly, the chosen model when it is one checkpoint). ``priors``:
    several labels per image, each label's share of the train images (the majority row's answers)."""
    base = json.loads(Path(baseline_metrics).read_text())
    if labels.ndim == 2:  # several labels per image: each label's more frequent answer in train, yes or no
        majority = (np.asarray(priors) > 0.5)[None]
    else:
        majority = classes.index(base["majority_class"])
    rows: dict[str, dict] = {
        "majority_class": {"size": None, "valid_accuracy": base["majority_accuracy"],
                           "test_accuracy": float((labels == majority).mean())},
        "baseline_model": {"size": None, "valid_accuracy": base["simple_accuracy"], "test_accuracy": None},
    }
    amp = lambda: autocast(device, common.train.amp)

    def accuracy_of(name: str, checkpoint: Path) -> float:
        return known[name] if name in known else _test_accuracy(checkpoint, common, device, test_at, amp, scoring)

    pixels = Path(baseline_metrics).parent / BASELINE.candidates / "pixels.pt"
    if "pixels_accuracy" in base and pixels.is_file():  # logistic regression on the pixels, a candidate of select's
        rows["pixels"] = {"size": base.get("pixels_side"), "valid_accuracy": base["pixels_accuracy"],
                          "test_accuracy": accuracy_of("pixels", pixels) if cfg.stage_table else None}
    for stage in TRAINING_STAGES:
        path = Path(stage_metrics[stage])
        if not path.is_file():
            continue
        rows[stage] = _stage_row(path, checkpoints, stage, cfg, accuracy_of)
    if cfg.stage_table and len(fold_models) >= 2:  # cv.folds: the k fold models averaged (select's cv_folds)
        rows["cv_folds"] = _folds_row(fold_models, classes, common, device, test_at, scoring)
    rows["chosen_plain"] = {"size": size, "valid_accuracy": None, "test_accuracy": plain["accuracy"]}
    rows["chosen"] = {"size": size, "valid_accuracy": info.get("valid_accuracy_as_chosen"),
                      "test_accuracy": chosen["accuracy"]}
    return rows


def _write_pictures(out: Path, test: ImageSet, labels: np.ndarray, p_plain: np.ndarray, p_chosen: np.ndarray,
                    threshold: float | None, classes: list[str], plain: dict, chosen: dict, gain: dict[str, float],
                    label: str, top: int) -> None:
    """Nothing: writes the predictions, the confusion matrices, the top losses and the per-class gain into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    if labels.ndim == 2:
        return _write_label_pictures(out, test, labels, p_plain, p_chosen, threshold, classes, plain, chosen, gain,
                                     label, top)
    _write_predictions(out / EVALUATE.predictions, test.paths, labels, p_plain, p_chosen, decide(p_chosen, threshold),
                       classes)
    plots.confusion({"plain": np.array(plain["confusion"]), f"as chosen ({label})": np.array(chosen["confusion"])},
                    classes, out / EVALUATE.confusion)
    worst = top_losses(p_chosen, labels, top)
    captions = [f"{classes[labels[i]]} → {classes[decide(p_chosen[i:i + 1], threshold)[0]]}\n"
                f"p={p_chosen[i].max():.2f} loss={-np.log(max(p_chosen[i, labels[i]], 1e-15)):.2f}" for i in worst]
    if len(worst):
        plots.tensor_grid(test.images[torch.as_tensor(worst)].float().numpy() / 255, captions, out / EVALUATE.top_losses,
                          "Top losses (as chosen): actual → predicted, probability of the top class, loss")
    else:
        plots.tensor_grid(np.zeros((0, 1, 8, 8)), [], out / EVALUATE.top_losses, "Top losses: none requested")
    plots.tta_gain(gain, out / EVALUATE.tta_gain, f"Per-class recall gain of the choices ({label}) over plain")


def _write_label_pictures(out: Path, test: ImageSet, labels: np.ndarray, p_plain: np.ndarray, p_chosen: np.ndarray,
                          threshold, classes: list[str], plain: dict, chosen: dict, gain: dict[str, float],
                          label: str, top: int) -> None:
    """:func:`_write_pictures` for several labels per image: each label's 2x2 confusion, plainly and
    as chosen, in place of the confusion matrix; each label's most confident mistakes (``top``
    among all labels, spread over them) in place of the top losses."""
    decided = decide(p_chosen, threshold, multi_label=True)
    _write_predictions(out / EVALUATE.predictions, test.paths, labels, p_plain, p_chosen, decided, classes)
    plots.label_confusion({"plain (0.5)": plain["confusion"], f"as chosen ({label})": chosen["confusion"]},
                          classes, out / EVALUATE.confusion)
    worst = label_mistakes(p_chosen, labels, decided, max(1, -(-top // len(classes))))[:top] if top else []
    shown = [i for i, _ in worst]
    captions = [f"{classes[k]}: {'present' if labels[i, k] > 0.5 else 'absent'}, p={p_chosen[i, k]:.2f}\n{a} → {d}"
                for (i, k), a, d in zip(worst, joined(labels[shown] > 0.5, classes), joined(decided[shown], classes))]
    idx = torch.as_tensor(shown, dtype=torch.long)
    plots.tensor_grid(test.images[idx].float().numpy() / 255 if len(worst) else np.zeros((0, 1, 8, 8)), captions,
                      out / EVALUATE.top_losses, "Most confident mistakes per label (as chosen): the label, its answer "
                      "and probability; actual labels → decided labels" if len(worst) else "Top losses: none")
    plots.tta_gain(gain, out / EVALUATE.tta_gain, f"Per-label recall gain of the choices ({label}) over plain (0.5)")


def run(common: Common, cfg: EvaluateConfig, *, split: Path, raw: Path, bundle: Path, checkpoints: dict[str, Path],
        stage_metrics: dict[str, Path], baseline_metrics: Path, out: Path, scoring: ScoringConfig,
        fold_models: list[Path] = ()) -> tuple[dict, Ensemble, dict]:
    """Score the bundle on the test split, plainly and as chosen; write the predictions, the
    confusion matrix, the top losses and the per-class gain into ``out``. Returns the metrics,
    the model (CPU, eval mode) and the bundle's metadata. ``scoring``: what runs each network
    scored (recipe.decide.engine)."""
    t0 = time.perf_counter()
    device = common.start()
    model, meta = load_bundle(bundle)
    table = read_split(split)
    classes = class_names(table)
    if model.classes != classes:
        raise DataError(f"{bundle}: trained on classes {model.classes}, the split has {classes}")
    multi = LABELS in table.columns
    if model.multi_label != multi:
        raise DataError(f"{bundle}: a model of {'several labels' if model.multi_label else 'one label'} per image, "
                        f"the split has {'several' if multi else 'one'}: rerun the pipeline after changing data.task")
    decoded: dict[int, ImageSet] = {}

    def test_at(px: int):
        if px not in decoded:
            decoded[px] = load_split(table, Path(raw) / RAW.files, split="test", size=px, classes=classes,
                                     workers=common.train.workers)
        return decoded[px]

    test = test_at(model.size)
    model = common.prepare(model, device)
    chosen_views, threshold = model.views, model.threshold
    # scored with BatchNorm folded (the graph export ships); the model returned is the bundle's
    p_chosen, p_plain, labels, plain, chosen = _scores(_scorers(fold_ensemble(model)[0], len(test), scoring, device),
                                                       test, common, cfg, device, classes)
    gain = {c: chosen["per_class"][c]["recall"] - plain["per_class"][c]["recall"] for c in classes}
    eval_s = time.perf_counter() - t0
    name = meta.get("info", {}).get("candidate", "+".join(model.names))
    label = f"{name} / {chosen_views.name}" + (f" / t={threshold_text(threshold)}" if threshold is not None else "")
    rows = _stage_table(cfg, common, device, test_at, baseline_metrics=baseline_metrics, classes=classes, labels=labels,
                        stage_metrics=stage_metrics, checkpoints=checkpoints, fold_models=fold_models, size=model.size,
                        info=meta.get("info", {}), plain=plain, chosen=chosen,
                        # the chosen model alone, plainly, is its one checkpoint's row: not scored twice
                        known={model.names[0]: plain["accuracy"]} if len(model.names) == 1 else {},
                        scoring=scoring, priors=_label_priors(table, classes) if multi else None)
    _write_pictures(Path(out), test, labels, p_plain, p_chosen, threshold, classes, plain, chosen, gain, label,
                    cfg.top_losses)
    metrics = {
        "chosen": {"candidate": name, "members": list(model.names), "views": chosen_views.name,
                   "n_views": len(chosen_views), "threshold": threshold, "size": model.size,
                   "logit_adjust": meta.get("info", {}).get("logit_adjust", 0.0)},
        "test": {k: v for k, v in plain.items() if k != "confusion"},
        "test_chosen": {k: v for k, v in chosen.items() if k != "confusion"},
        "chosen_gain": {"accuracy": chosen["accuracy"] - plain["accuracy"],
                        "log_loss": chosen["log_loss"] - plain["log_loss"], "per_class_recall": gain},
        "confusion": {"classes": classes, "plain": plain["confusion"], "chosen": chosen["confusion"]},
        "most_confused": (label_errors(decide(p_chosen, threshold, multi_label=True), labels, classes,
                                       cfg.metrics.most_confused) if multi else
                          most_confused(np.array(chosen["confusion"]), classes, cfg.metrics.most_confused)),
        "table": rows,
        "eval_time_s": round(eval_s, 1),
        "time_s": round(time.perf_counter() - t0, 1),
    }
    model = model.cpu().eval()
    return metrics, model, meta


def _label_priors(table, classes: list[str]) -> np.ndarray:
    """Several labels per image: each label's share of the train split's images."""
    return hot(table.loc[table["split"] == "train", LABELS], classes).mean(0)


def _write_predictions(path: Path, paths: list[str], labels, plain, chosen, decided, classes: list[str]) -> None:
    """One row per test image: DVC's confusion template reads ``actual`` against ``predicted``
    (plain) or ``predicted_chosen`` (views and threshold); the p_ columns are the chosen model's.
    Several labels per image: each of those three the labels joined by a space (plainly: at 0.5),
    ``probability`` the mean probability of the labels decided, over them."""
    if labels.ndim == 2:
        plain_yes = plain >= 0.5
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "actual", "predicted", "probability", "predicted_chosen", "probability_chosen",
                        *[f"p_{c}" for c in classes]])
            actual, said, said_chosen = joined(labels > 0.5, classes), joined(plain_yes, classes), joined(decided, classes)
            for i, p in enumerate(paths):
                w.writerow([p, actual[i], said[i],
                            f"{plain[i][plain_yes[i]].mean() if plain_yes[i].any() else 0.0:.6f}",
                            said_chosen[i],
                            f"{chosen[i][decided[i] > 0].mean() if decided[i].any() else 0.0:.6f}",
                            *[f"{v:.6f}" for v in chosen[i]]])
        return
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "actual", "predicted", "probability", "predicted_chosen", "probability_chosen",
                    *[f"p_{c}" for c in classes]])
        for i, p in enumerate(paths):
            w.writerow([p, classes[labels[i]], classes[plain[i].argmax()], f"{plain[i].max():.6f}",
                        classes[decided[i]], f"{chosen[i, decided[i]]:.6f}", *[f"{v:.6f}" for v in chosen[i]]])


def format_table(rows: dict[str, dict]) -> str:
    """The stage table as fixed-width text (printed at the end of ``dvc repro``)."""
    def pct(v):
        return "" if v is None else f"{100 * v:.2f}%"
    lines = [f"{'stage':<24}{'size':>6}{'valid acc':>14}{'test acc':>12}"]
    for name, r in rows.items():
        valid = f"({r['fit_on']})" if r.get("fit_on") else pct(r["valid_accuracy"])
        note = "  (passed its input on)" if r.get("passed_on") else ""
        lines.append(f"{name:<24}{r['size'] or '':>6}{valid:>14}{pct(r['test_accuracy']):>12}{note}")
    return "\n".join(lines)


def dynamics_picture(stage_dirs: dict[str, Path], path: Path) -> Path:
    """The prediction dynamics of every training stage (each one's ``dynamics.csv``, in
    ``stage_dirs``' order) in one picture (recipe.report.plots.dynamics)."""
    stages = []
    for stage, d in stage_dirs.items():
        with (Path(d) / TRAINING.dynamics).open(newline="") as f:
            stages.append((stage, list(csv.DictReader(f))))
    return plots.dynamics(stages, path, "prediction dynamics: p(true class) of the watched valid images, epoch by epoch")
