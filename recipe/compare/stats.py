"""Figures from one run's test predictions, their bootstrap intervals, and paired tests.

- :func:`per_image`: a run's test predictions as arrays (true class, plain and chosen prediction,
  the chosen probability of the true class).
- :func:`group_interval`: the interval of a group's mean figure by a two-stage bootstrap: draw the
  runs with replacement, then each drawn run's test images with replacement (so the interval holds
  both the seeds' spread and the test split's sampling). With one run it is the test images' alone.
- :func:`paired`: two runs on the same test images: the difference, McNemar's exact test (the
  images one gets right and the other wrong), and a paired bootstrap interval of the difference.
- :func:`paired_mean`: the mean of per-seed differences and its two-stage paired interval.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import binomtest

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


def per_image(predictions: pd.DataFrame) -> Images:
    frame = predictions.sort_values("path", kind="stable")
    # the class list from the probability columns (p_<class>: every class, predicted or not), so two
    # runs of one dataset number their classes alike
    names = sorted({c[2:] for c in frame.columns if c.startswith("p_")} | set(frame["actual"].astype(str))
                   | set(frame["predicted"].astype(str)) | set(frame["predicted_chosen"].astype(str)))
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


def group_interval(runs: list[Images], figure: str, *, resamples: int, seed: int, level: float) -> tuple[float, float]:
    """Two-stage percentile bootstrap of the mean of ``figure`` over ``runs``."""
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for b in range(resamples):
        drawn = rng.integers(0, len(runs), size=len(runs)) if len(runs) > 1 else [0]
        values = []
        for i in drawn:
            r = runs[i]
            idx = rng.integers(0, len(r.actual), size=len(r.actual))
            values.append(score(figure, r.actual[idx], r.predicted[figure][idx], r.classes))
        means[b] = np.mean(values)
    return _bounds(means, level)


def interval_of_values(values: list[float], *, resamples: int, seed: int, level: float) -> tuple[float, float]:
    """Percentile bootstrap of a mean over runs (for figures with no per-image record: valid, minutes)."""
    a = np.asarray(values, dtype=float)
    if len(a) < 2:
        return float(a.mean()), float(a.mean())
    rng = np.random.default_rng(seed)
    return _bounds(a[rng.integers(0, len(a), size=(resamples, len(a)))].mean(1), level)


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
    """Mean over seeds of B minus A, and its interval: draw the seeds, then each seed's images."""
    rng = np.random.default_rng(seed)

    def diff(a: Images, b: Images, idx: np.ndarray) -> float:
        classes = max(a.classes, b.classes)
        return (score(figure, a.actual[idx], b.predicted[figure][idx], classes)
                - score(figure, a.actual[idx], a.predicted[figure][idx], classes))

    point = float(np.mean([diff(a, b, np.arange(len(a.actual))) for a, b in pairs]))
    means = np.empty(resamples)
    for r in range(resamples):
        drawn = rng.integers(0, len(pairs), size=len(pairs)) if len(pairs) > 1 else [0]
        means[r] = np.mean([diff(*pairs[i], rng.integers(0, len(pairs[i][0].actual), size=len(pairs[i][0].actual)))
                            for i in drawn])
    low, high = _bounds(means, level)
    return point, low, high
