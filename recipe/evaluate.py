"""evaluate: the chosen checkpoint on the test split, plainly and with TTA, and the stage table.

Contract: :func:`run` scores ``evaluate.checkpoint`` on the test split once plainly and once with
the configured TTA views (:mod:`recipe.tta`), computes the metrics (:mod:`recipe.metrics`),
writes the predictions, the confusion matrix, the top losses and the per-class TTA gain, and
builds the fast.ai lesson's table: accuracy after every stage, valid (as each stage reported
it) and test. Nothing here talks to MLflow (``stages/evaluate.py`` logs).
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

from recipe import plots
from recipe.data.loader import ImageSet, class_names, load_split, read_split
from recipe.errors import DataError
from recipe.fit import autocast
from recipe.metrics import classification_metrics, most_confused, top_losses
from recipe.models import Classifier
from recipe.schema import EvaluateConfig
from recipe.session import load_checkpoint
from recipe.training import Common
from recipe.tta import plain_views, predict, tta_views


TABLE_STAGES = ("train_head", "finetune", "resize")


def run(common: Common, cfg: EvaluateConfig, *, split: Path, raw: Path, checkpoints: dict[str, Path],
        stage_metrics: dict[str, Path], baseline_metrics: Path, out: Path) -> tuple[dict, Classifier, dict]:
    """Score ``cfg.checkpoint`` on the test split, plainly and with TTA; write the predictions,
    the confusion matrix, the top losses and the per-class TTA gain into ``out``. Returns the
    metrics, the model (CPU, eval mode) and the checkpoint's metadata."""
    t0 = time.perf_counter()
    device = common.start()
    model, meta = load_checkpoint(checkpoints[cfg.checkpoint])
    size = cfg.size or meta["size"]
    table = read_split(split)
    classes = class_names(table)
    if list(meta["classes"]) != classes:
        raise DataError(f"{checkpoints[cfg.checkpoint]}: trained on classes {meta['classes']}, the split has {classes}")
    decoded: dict[int, ImageSet] = {}

    def test_at(px: int):
        if px not in decoded:
            decoded[px] = load_split(table, Path(raw) / "files", split="test", size=px, classes=classes,
                                     workers=common.train.workers)
        return decoded[px]

    test = test_at(size)
    views = tta_views(cfg.tta.views, scales=cfg.tta.scales, crop=cfg.tta.crop, n=cfg.tta.n, beta=cfg.tta.beta,
                         augment=common.augmenter(), seed=common.seed)
    model = common.prepare(model, device)
    amp = lambda: autocast(device, common.train.amp)  # noqa: E731
    pred = predict(model, common.batches(test, device, train=False), views, autocast=amp)
    labels = pred["labels"].numpy()
    kw = dict(ece_bins=cfg.metrics.ece_bins, top_k=cfg.metrics.top_k, bootstrap=cfg.metrics.bootstrap,
              confidence=cfg.metrics.confidence, seed=common.seed)
    plain = classification_metrics(pred["plain"].numpy(), labels, classes, **kw)
    tta = classification_metrics(pred["tta"].numpy(), labels, classes, **kw)
    gain = {c: tta["per_class"][c]["recall"] - plain["per_class"][c]["recall"] for c in classes}
    eval_s = time.perf_counter() - t0

    # The fast.ai lesson's table: accuracy after every stage, valid (as each stage reported it)
    # and test (each checkpoint scored here, plainly).
    base = json.loads(Path(baseline_metrics).read_text())
    majority = classes.index(base["majority_class"])
    rows: dict[str, dict] = {
        "majority_class": {"size": None, "valid_accuracy": base["majority_accuracy"],
                           "test_accuracy": float((labels == majority).mean())},
        "baseline_model": {"size": None, "valid_accuracy": base["simple_accuracy"], "test_accuracy": None},
    }
    for stage in TABLE_STAGES:
        path = Path(stage_metrics[stage])
        if not path.is_file():
            continue
        stage_m = json.loads(path.read_text())
        row = {"size": stage_m.get("size"), "valid_accuracy": stage_m.get("valid_accuracy"), "test_accuracy": None}
        if stage_m.get("fit_on", "train") != "train":  # the valid images were trained on: not a held-out figure
            row.update(valid_accuracy=None, fit_on=stage_m["fit_on"])
        if stage == cfg.checkpoint:
            row["test_accuracy"] = plain["accuracy"]
        elif cfg.stage_table and Path(checkpoints[stage]).is_file():
            other, other_meta = load_checkpoint(checkpoints[stage])
            other = common.prepare(other, device)
            p = predict(other, common.batches(test_at(other_meta["size"]), device, train=False),
                           plain_views(), autocast=amp)
            row["test_accuracy"] = float((p["plain"].argmax(1) == p["labels"]).double().mean())
        rows[stage] = row
    rows["evaluate"] = {"size": size, "valid_accuracy": None, "test_accuracy": plain["accuracy"]}
    rows[f"evaluate_tta_{views.name}"] = {"size": size, "valid_accuracy": None, "test_accuracy": tta["accuracy"]}

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_predictions(out / "predictions.csv", test.paths, labels, pred["plain"].numpy(), pred["tta"].numpy(), classes)
    plots.confusion({"plain": np.array(plain["confusion"]), f"TTA ({views.name}, {len(views)} views)": np.array(tta["confusion"])},
                    classes, out / "confusion.png")
    worst = top_losses(pred["tta"].numpy(), labels, cfg.top_losses)
    probs = pred["tta"].numpy()
    captions = [f"{classes[labels[i]]} → {classes[probs[i].argmax()]}\n"
                f"p={probs[i].max():.2f} loss={-np.log(max(probs[i, labels[i]], 1e-15)):.2f}" for i in worst]
    if len(worst):
        plots.tensor_grid(test.images[torch.as_tensor(worst)].float().numpy() / 255, captions, out / "top_losses.png",
                          "Top losses (with TTA): actual → predicted, probability of the prediction, loss")
    else:
        plots.tensor_grid(np.zeros((0, 1, 8, 8)), [], out / "top_losses.png", "Top losses: none requested")
    plots.tta_gain(gain, out / "tta_gain.png", f"Per-class recall gain from TTA ({views.name})")
    metrics = {
        "checkpoint": cfg.checkpoint, "size": size, "tta_views": views.name, "views": len(views),
        "test": {k: v for k, v in plain.items() if k != "confusion"},
        "test_tta": {k: v for k, v in tta.items() if k != "confusion"},
        "tta_gain": {"accuracy": tta["accuracy"] - plain["accuracy"], "log_loss": tta["log_loss"] - plain["log_loss"],
                     "per_class_recall": gain},
        "confusion": {"classes": classes, "plain": plain["confusion"], "tta": tta["confusion"]},
        "most_confused": most_confused(np.array(tta["confusion"]), classes, cfg.metrics.most_confused),
        "table": rows,
        "eval_time_s": round(eval_s, 1),
        "time_s": round(time.perf_counter() - t0, 1),
    }
    model = model.cpu().eval()
    return metrics, model, meta


def _write_predictions(path: Path, paths: list[str], labels, plain, tta, classes: list[str]) -> None:
    """One row per test image: DVC's confusion template reads ``actual`` against ``predicted``
    (plain) or ``predicted_tta``."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "actual", "predicted", "probability", "predicted_tta", "probability_tta",
                    *[f"p_{c}" for c in classes]])
        for i, p in enumerate(paths):
            w.writerow([p, classes[labels[i]], classes[plain[i].argmax()], f"{plain[i].max():.6f}",
                        classes[tta[i].argmax()], f"{tta[i].max():.6f}", *[f"{v:.6f}" for v in tta[i]]])


def format_table(rows: dict[str, dict]) -> str:
    """The stage table as fixed-width text (printed at the end of ``dvc repro``)."""
    def pct(v):
        return "" if v is None else f"{100 * v:.2f}%"
    lines = [f"{'stage':<24}{'size':>6}{'valid acc':>14}{'test acc':>12}"]
    for name, r in rows.items():
        valid = f"({r['fit_on']})" if r.get("fit_on") else pct(r["valid_accuracy"])
        lines.append(f"{name:<24}{r['size'] or '':>6}{valid:>14}{pct(r['test_accuracy']):>12}")
    return "\n".join(lines)
