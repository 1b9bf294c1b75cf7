"""The names of the files each stage writes in its folder under ``outputs/`` (and ``data/raw``),
written once.

The folders themselves are dvc.yaml's ``vars.paths`` (each stage gets its folder on the command
line); the file names inside them live here, as one frozen dataclass per kind of folder, and
every module that writes or reads such a file spells it through these. tests/test_layout.py
checks them against every out, metric and plot dvc.yaml declares, so the two cannot drift.

``TRAINING_STAGES`` is the list of the training stages whose checkpoints select, evaluate and
the report read, in pipeline order.
"""
from __future__ import annotations

from dataclasses import dataclass

TRAINING_STAGES = ("train_head", "finetune", "resize")


@dataclass(frozen=True)
class Raw:
    """ingest: ``data/raw``."""
    files: str = "files"  # the copied images
    index: str = "index.csv"
    summary: str = "ingest.json"


@dataclass(frozen=True)
class Audit:
    manifest: str = "manifest.csv"
    report: str = "report.json"
    plots: str = "plots"


@dataclass(frozen=True)
class Split:
    split: str = "split.csv"
    metrics: str = "metrics.json"
    counts: str = "counts.png"


@dataclass(frozen=True)
class Baseline:
    metrics: str = "metrics.json"
    batch: str = "batch.png"
    candidates: str = "candidates"  # the simple baselines as checkpoints select scores: pixels.pt


@dataclass(frozen=True)
class LrFind:
    curve: str = "curve.csv"
    plot: str = "curve.png"
    suggestion: str = "suggestion.json"


@dataclass(frozen=True)
class Training:
    """train_head, finetune, resize (and each cross-validation fold's copies)."""
    model: str = "model.pt"
    history: str = "history.csv"
    history_plot: str = "history.png"
    lr_schedule: str = "lr_schedule.csv"
    lr_schedule_plot: str = "lr_schedule.png"
    dynamics: str = "dynamics.csv"  # the watched valid images' probabilities per epoch
    metrics: str = "metrics.json"
    snapshots: str = "snapshots"  # finetune and resize: epoch_<n>.pt at each SGDR cycle's end
    ema: str = "ema.pt"  # in snapshots/, with train.ema: the moving average of the weights (<stage>@ema)
    resume: str = "resume"  # a killed stage's last epoch; removed when the stage ends
    lr_find: str = "lr_find"  # finetune with lr: auto: the range test on the unfrozen model


@dataclass(frozen=True)
class Cv:
    oof: str = "oof.csv"
    label_issues: str = "label_issues.csv"
    label_issues_plot: str = "label_issues.png"
    split: str = "split.csv"  # what the final fit trains on (cv.policy)
    metrics: str = "metrics.json"
    folds: str = "folds"  # folds/<k>/<stage>/: each fold's stages (a Training folder each)
    fold_splits: str = "folds/splits"  # cv_split's output: FoldSplits


@dataclass(frozen=True)
class FoldSplits:
    """cv_split: the fold of every train and valid image, and fold k's split as ``<k>.csv``."""
    folds: str = "folds.csv"


@dataclass(frozen=True)
class Select:
    model: str = "model.pt"  # the bundle: the chosen members, views and threshold
    candidates: str = "candidates.csv"
    candidates_plot: str = "candidates.png"
    metrics: str = "metrics.json"


@dataclass(frozen=True)
class Evaluate:
    metrics: str = "metrics.json"
    predictions: str = "predictions.csv"
    report: str = "report.html"
    confusion: str = "confusion.png"
    top_losses: str = "top_losses.png"
    tta_gain: str = "tta_gain.png"
    dynamics: str = "dynamics.png"
    inside: str = "inside"


@dataclass(frozen=True)
class Inside:
    """evaluate's ``inside/``: the pictures inside the chosen model (recipe.decide.inside)."""
    first_conv: str = "first_conv.png"
    weight_change: str = "weight_change.png"
    activations: str = "activations.png"
    gradcam_top_losses: str = "gradcam_top_losses.png"
    gradcam_correct: str = "gradcam_correct.png"


@dataclass(frozen=True)
class Export:
    model: str = "model.onnx"
    metrics: str = "metrics.json"


RAW, AUDIT, SPLIT, BASELINE, LR_FIND = Raw(), Audit(), Split(), Baseline(), LrFind()
TRAINING, CV, FOLD_SPLITS, SELECT, EVALUATE, INSIDE, EXPORT = (Training(), Cv(), FoldSplits(), Select(), Evaluate(),
                                                             Inside(), Export())

# dvc.yaml's stage name -> the files its folder holds (the per-fold copies: cv_<stage>@<k>)
BY_STAGE = {"ingest": RAW, "audit": AUDIT, "split": SPLIT, "baseline": BASELINE, "lr_find": LR_FIND,
            **dict.fromkeys(TRAINING_STAGES, TRAINING), "cv": CV, "select": SELECT, "evaluate": EVALUATE,
            "export": EXPORT}
