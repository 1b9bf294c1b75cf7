"""Classification metrics from probabilities and labels, and what the mistakes are.

Contract: :func:`classification_metrics` turns probabilities and labels into accuracy, balanced
accuracy, macro F1, log loss, per-class precision/recall/F1, expected calibration error, top-k
(when there are more than k classes) and a bootstrap confidence interval for accuracy. Every
setting comes from ``evaluate.metrics`` in conf/ (no defaults here). Plain numpy; nothing here
reads files or talks to MLflow.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch


def confusion(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """``m[true, predicted]`` counts."""
    m = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(m, (labels, predicted), 1)
    return m


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int) -> float:
    """Guo et al. (2017): the confidence-vs-accuracy gap over equal-width confidence bins,
    weighted by the fraction of samples in each bin."""
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return float(ece)


def bootstrap_accuracy(correct: np.ndarray, *, resamples: int, seed: int, level: float) -> tuple[float, float]:
    """Percentile bootstrap interval of the accuracy (seeded: the same inputs give the same interval)."""
    rng = np.random.default_rng(seed)
    n = len(correct)
    means = np.empty(resamples)
    for start in range(0, resamples, 256):  # bounded memory: 256 resamples at a time
        k = min(256, resamples - start)
        means[start:start + k] = correct[rng.integers(0, n, size=(k, n))].mean(1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def classification_metrics(probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                           classes: list[str], *, ece_bins: int, top_k: Iterable[int], bootstrap: int,
                           confidence: float, seed: int, predicted: np.ndarray | None = None) -> dict:
    """``predicted``: the classes decided (a threshold's); the argmax when None. Log loss, ECE and
    top-k read the probabilities alone."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    c = len(classes)
    pred = probs.argmax(1) if predicted is None else np.asarray(predicted, dtype=np.int64)
    m = confusion(labels, pred, c)
    tp = np.diag(m).astype(float)
    support = m.sum(1)
    predicted = m.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros(c), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(c), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(c), where=(precision + recall) > 0)
    present = support > 0
    eps = 1e-15  # as sklearn's log_loss: a probability of 0 for the true class costs -ln(1e-15)
    p_true = np.clip(probs[np.arange(len(labels)), labels], eps, 1.0)
    correct = (pred == labels).astype(float)
    out = {
        "images": int(len(labels)),
        "accuracy": float(correct.mean()),
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "log_loss": float(-np.log(p_true).mean()),
        "ece": expected_calibration_error(probs, labels, ece_bins),
    }
    for k in top_k:
        if c > k:
            topk = np.argsort(-probs, axis=1, kind="stable")[:, :k]
            out[f"top{k}_accuracy"] = float((topk == labels[:, None]).any(1).mean())
    if bootstrap:
        lo, hi = bootstrap_accuracy(correct, resamples=bootstrap, seed=seed, level=confidence)
        out[f"accuracy_ci{round(100 * confidence)}"] = [lo, hi]
    out["per_class"] = {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                               "support": int(support[i])} for i, name in enumerate(classes)}
    out["confusion"] = m.tolist()
    return out


def most_confused(m: np.ndarray, classes: list[str], limit: int) -> list[dict]:
    """Off-diagonal cells of the confusion matrix, most frequent first (fast.ai's most_confused)."""
    pairs = [(int(m[i, j]), i, j) for i in range(len(classes)) for j in range(len(classes)) if i != j and m[i, j]]
    pairs.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [{"actual": classes[i], "predicted": classes[j], "count": n} for n, i, j in pairs[:limit]]


def top_losses(probs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest losses, -ln p(true class), largest first; the most confident
    mistakes come first."""
    p_true = np.clip(np.asarray(probs)[np.arange(len(labels)), labels], 1e-15, 1.0)
    order = np.argsort(np.log(p_true), kind="stable")
    return order[:k]



def binary_log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """The binary cross-entropy of every image's every label, averaged (several labels per image)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-15, 1 - 1e-15)
    y = np.asarray(labels, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def balanced_binary_log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Several labels per image: each label's binary log loss with its positives (``labels > 0.5``,
    as :func:`label_counts` decides) and its negatives weighed alike, averaged over the labels."""
    q = np.clip(np.asarray(probs, dtype=np.float64), 1e-15, 1 - 1e-15)
    y = np.asarray(labels) > 0.5
    per_label = []
    for k in range(y.shape[1]):
        pos = y[:, k]
        sides = [-np.log(q[pos, k]).mean() if pos.any() else None,
                 -np.log(1 - q[~pos, k]).mean() if (~pos).any() else None]
        per_label.append(np.mean([v for v in sides if v is not None]))
    return float(np.mean(per_label))


def label_counts(pred: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per label: true positives, false positives, false negatives, true negatives (``(N, L)`` 0/1)."""
    pred, y = np.asarray(pred, bool), np.asarray(labels) > 0.5
    return (pred & y).sum(0), (pred & ~y).sum(0), (~pred & y).sum(0), (~pred & ~y).sum(0)


def multi_label_metrics(probs: np.ndarray, labels: np.ndarray, classes: list[str], thresholds) -> dict:
    """Several labels per image: the decisions ``probs >= thresholds`` (one per label, or one for
    all) scored as micro and macro F1, exact-match ratio (every label right), Hamming loss (the
    share of wrong yes/no answers), the mean binary log loss, macro and micro average precision
    (scikit-learn's, from the probabilities alone; macro over the labels present), and per label
    support, precision, recall, F1 and AP."""
    from sklearn.metrics import average_precision_score

    probs = np.asarray(probs, dtype=np.float64)
    y = (np.asarray(labels) > 0.5).astype(np.int64)
    pred = probs >= np.asarray(thresholds, dtype=np.float64)
    tp, fp, fn, _ = label_counts(pred, y)
    precision = np.divide(tp, tp + fp, out=np.zeros(len(classes)), where=tp + fp > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros(len(classes)), where=tp + fn > 0)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros(len(classes)), where=2 * tp + fp + fn > 0)
    present = y.sum(0) > 0
    ap = np.array([average_precision_score(y[:, k], probs[:, k]) if present[k] else np.nan for k in range(len(classes))])
    micro_f1 = 2 * tp.sum() / max(1, 2 * tp.sum() + fp.sum() + fn.sum())
    return {
        "images": int(len(y)),
        "accuracy": float((pred == y).mean()),  # every image's every yes/no answer
        "exact_match": float((pred == y).all(1).mean()),
        "hamming_loss": float((pred != y).mean()),
        "micro_f1": float(micro_f1),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,  # mean recall over labels
        "log_loss": binary_log_loss(probs, y),
        "balanced_log_loss": balanced_binary_log_loss(probs, y),
        "macro_ap": float(np.nanmean(ap)) if present.any() else 0.0,
        "micro_ap": float(average_precision_score(y.ravel(), probs.ravel())) if y.any() else 0.0,
        "per_class": {name: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
                             "ap": None if np.isnan(ap[k]) else float(ap[k]), "support": int(y[:, k].sum())}
                      for k, name in enumerate(classes)},
    }


def label_confusion(pred: np.ndarray, labels: np.ndarray) -> list[list[list[int]]]:
    """Several labels per image: each label's 2x2 confusion ``[[tn, fp], [fn, tp]]`` (rows: absent,
    present; columns: decided no, yes), as scikit-learn's ``multilabel_confusion_matrix``."""
    tp, fp, fn, tn = label_counts(pred, labels)
    return [[[int(tn[k]), int(fp[k])], [int(fn[k]), int(tp[k])]] for k in range(len(tp))]


def label_errors(pred: np.ndarray, labels: np.ndarray, classes: list[str], limit: int) -> list[dict]:
    """Several labels per image, the counterpart of :func:`most_confused`: each label's misses
    (present, decided absent: actual ``c``, predicted ``not c``) and false alarms (actual ``not c``,
    predicted ``c``), most frequent first."""
    _, fp, fn, _ = label_counts(pred, labels)
    cells = [(int(fn[k]), k, 0) for k in range(len(classes)) if fn[k]] + \
            [(int(fp[k]), k, 1) for k in range(len(classes)) if fp[k]]
    cells.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [{"actual": c if alarm == 0 else f"not {c}", "predicted": f"not {c}" if alarm == 0 else c, "count": n}
            for n, k, alarm in cells[:limit] for c in (classes[k],)]


def label_mistakes(probs: np.ndarray, labels: np.ndarray, decided: np.ndarray, per_label: int) -> list[tuple[int, int]]:
    """Several labels per image, the counterpart of :func:`top_losses`: for each label in turn, its
    ``per_label`` most confident mistakes, ``(image index, label index)``, the wrong yes/no answers
    with the largest binary loss first."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-15, 1 - 1e-15)
    y = np.asarray(labels) > 0.5
    loss = -np.where(y, np.log(p), np.log(1 - p))
    wrong = np.asarray(decided).astype(bool) != y
    out = []
    for k in range(p.shape[1]):
        idx = np.flatnonzero(wrong[:, k])
        out += [(int(i), k) for i in idx[np.argsort(-loss[idx, k], kind="stable")][:per_label]]
    return out
