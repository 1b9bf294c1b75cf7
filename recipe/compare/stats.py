"""Figures from one run's test predictions, their intervals, and paired tests.

- :func:`per_image`: a run's test predictions as arrays (true class, plain and chosen prediction),
  numbered from a class list two runs can share.
- :func:`interval`: the interval of a group's mean figure. With two runs or more, Student's t on
  the runs' values (mean ± t·s/√k): each seed has its own split, so the spread between runs holds
  the test split's sampling as well as training's noise, and resampling a few runs (a percentile
  bootstrap of 2 or 3 values) would be far too narrow. With one run, a percentile bootstrap of
  its test images (the only spread there is).
- :func:`paired`: two runs on the same test images: the difference, McNemar's exact test (the
  images one gets right and the other wrong), and a paired bootstrap interval of the difference.
- :func:`paired_mean`: the mean of per-seed differences, with Student's t on them (two seeds or
  more) or the one seed's paired bootstrap.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import binomtest
from scipy.stats import t as student_t

# figure name -> column of predictions.csv holding the prediction it scores
PREDICTED = {"test_accuracy": "predicted", "test_accuracy_chosen": "predicted_chosen",
             "test_balanced_accuracy": "predicted", "test_balanced_accuracy_chosen": "predicted_chosen"}


@dataclass(frozen=True)
class Images:
    """One run's test images: paths, true class and each figure's predicted class (as ints)."""

    paths: tuple[str, ...]
    actual: np.ndarray
    predicted: dict[str, np.ndarray]
    classes: int


def class_list(*frames: pd.DataFrame) -> list[str]:
    """Every class named in the frames (probability columns ``p_<class>``, true and predicted labels), sorted."""
    names: set[str] = set()
    for f in frames:
        names |= {c[2:] for c in f.columns if c.startswith("p_")}
        for col in ("actual", "predicted", "predicted_chosen"):
            names |= set(f[col].astype(str))
    return sorted(names)


def per_image(predictions: pd.DataFrame, classes: list[str] | None = None) -> Images:
    """The run's test images sorted by path, each class numbered by its place in ``classes`` (by
    default this run's own :func:`class_list`; pass one list for runs that are compared)."""
    frame = predictions.sort_values("path", kind="stable")
    names = classes if classes is not None else class_list(frame)
    code = {n: i for i, n in enumerate(names)}
    actual = frame["actual"].astype(str).map(code).to_numpy()
    predicted = {k: frame[c].astype(str).map(code).to_numpy() for k, c in PREDICTED.items()}
    return Images(tuple(frame["path"]), actual, predicted, len(names))


def score(figure: str, actual: np.ndarray, predicted: np.ndarray, classes: int) -> float:
    """Accuracy, or balanced accuracy (the mean recall over the classes present)."""
    correct = actual == predicted
    if "balanced" not in figure:
        return float(correct.mean())
    hits = np.bincount(actual, weights=correct, minlength=classes)
    seen = np.bincount(actual, minlength=classes)
    return float((hits[seen > 0] / seen[seen > 0]).mean())


def _bounds(values: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def t_interval(values: list[float], level: float) -> tuple[float, float]:
    """mean ± t(k-1)·s/√k over ``values`` (two or more)."""
    a = np.asarray(values, dtype=float)
    half = float(student_t.ppf((1 + level) / 2, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a)))
    return float(a.mean()) - half, float(a.mean()) + half


def image_bootstrap(run: Images, figure: str, *, resamples: int, seed: int, level: float) -> tuple[float, float]:
    """Percentile bootstrap of one run's ``figure`` over its test images."""
    rng = np.random.default_rng(seed)
    n = len(run.actual)
    values = np.empty(resamples)
    for b in range(resamples):
        idx = rng.integers(0, n, size=n)
        values[b] = score(figure, run.actual[idx], run.predicted[figure][idx], run.classes)
    return _bounds(values, level)


def interval(values: list[float], run: Images | None, figure: str, *, resamples: int, seed: int,
             level: float) -> tuple[float, float, str]:
    """The interval of the mean of ``values`` (one per run), and how it was made: Student's t with
    two runs or more; with one, the image bootstrap of ``run`` when there is one (a test figure),
    else none (low = high = the value)."""
    if len(values) >= 2:
        return (*t_interval(values, level), "t")
    if run is not None:
        return (*image_bootstrap(run, figure, resamples=resamples, seed=seed, level=level), "images")
    return float(values[0]), float(values[0]), "none"


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> tuple[int, int, float]:
    """(images only A gets right, images only B gets right, exact two-sided p-value)."""
    only_a = int((a_correct & ~b_correct).sum())
    only_b = int((b_correct & ~a_correct).sum())
    p = 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return only_a, only_b, p


@dataclass(frozen=True)
class Paired:
    difference: float  # B minus A
    low: float
    high: float
    only_a: int
    only_b: int
    p_value: float


def paired(a: Images, b: Images, figure: str, *, resamples: int, seed: int, level: float) -> Paired:
    """B against A on the same test images (the caller checks the paths match)."""
    rng = np.random.default_rng(seed)
    pa, pb = a.predicted[figure], b.predicted[figure]
    classes = max(a.classes, b.classes)
    diffs = np.empty(resamples)
    for i in range(resamples):
        idx = rng.integers(0, len(a.actual), size=len(a.actual))
        diffs[i] = score(figure, a.actual[idx], pb[idx], classes) - score(figure, a.actual[idx], pa[idx], classes)
    only_a, only_b, p = mcnemar(pa == a.actual, pb == b.actual)
    low, high = _bounds(diffs, level)
    return Paired(score(figure, b.actual, pb, classes) - score(figure, a.actual, pa, classes), low, high,
                  only_a, only_b, p)


def paired_mean(pairs: list[tuple[Images, Images]], figure: str, *, resamples: int, seed: int,
                level: float) -> tuple[float, float, float]:
    """Mean over seeds of B minus A, and its interval: Student's t on the per-seed differences with
    two seeds or more, the paired bootstrap of the images with one."""
    diffs = []
    for a, b in pairs:
        classes = max(a.classes, b.classes)
        diffs.append(score(figure, a.actual, b.predicted[figure], classes) - score(figure, a.actual, a.predicted[figure],
                                                                                  classes))
    if len(diffs) >= 2:
        low, high = t_interval(diffs, level)
        return float(np.mean(diffs)), low, high
    p = paired(*pairs[0], figure, resamples=resamples, seed=seed, level=level)
    return p.difference, p.low, p.high
