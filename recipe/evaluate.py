"""Scoring a trained classifier: test-time augmentation, metrics, and what its mistakes look like.

Contract:

- :func:`tta_views` names a set of views from a small table (``none``, ``flip_h``, ``flip_v``,
  ``flips`` (both flips and both together), ``dihedral``, ``multiscale``, ``five_crop``, ``augment``). A view maps a batch of images in
  [0, 1] to a batch the network accepts.
- :func:`predict` runs a model over batches once, and for each batch every view in turn. It
  returns the plain probabilities (the unchanged image) and the TTA probabilities: the mean of
  the views' *softmax probabilities* (never of logits or log-probabilities), or, with ``beta``,
  fast.ai's blend ``beta * plain + (1 - beta) * mean(other views)``. Only running sums per
  batch are kept, so memory does not grow with the number of views.
- :func:`classification_metrics` turns probabilities and labels into accuracy, balanced
  accuracy, macro F1, log loss, per-class precision/recall/F1, expected calibration error, top-k
  (when there are more than k classes) and a bootstrap confidence interval for accuracy.

Nothing here reads files or talks to MLflow; ``recipe.steps.evaluate`` is the stage.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from recipe.augment import Augment
from recipe.errors import ConfigError

View = Callable[[torch.Tensor], torch.Tensor]
VIEW_SETS = ("none", "flip_h", "flip_v", "flips", "dihedral", "multiscale", "five_crop", "augment")


@dataclass(frozen=True)
class Views:
    """The extra views averaged with the plain image, and how they are blended."""
    name: str
    extra: tuple[tuple[str, View], ...]  # (label, view), not including the plain image
    beta: float | None  # None: equal weight for the plain image and every view

    def __len__(self) -> int:
        return 1 + len(self.extra)


def _rescale(scale: float) -> View:
    def view(x: torch.Tensor) -> torch.Tensor:
        side = max(8, int(round(x.shape[-1] * scale)))
        return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=scale < 1)
    return view


def _crop(frac: float, where: str) -> View:
    def view(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ch, cw = max(1, int(round(h * frac))), max(1, int(round(w * frac)))
        top = {"c": (h - ch) // 2, "tl": 0, "tr": 0, "bl": h - ch, "br": h - ch}[where]
        left = {"c": (w - cw) // 2, "tl": 0, "tr": w - cw, "bl": 0, "br": w - cw}[where]
        crop = x[..., top:top + ch, left:left + cw]
        return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
    return view


def _augmented(augment: Augment, seed: int, i: int) -> View:
    # One generator per view, seeded by (seed, view): the same call gives the same views.
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * (i + 1))
    return lambda x: augment(x, gen)


DIHEDRAL = (("flip_h", lambda x: x.flip(3)), ("flip_v", lambda x: x.flip(2)), ("rot180", lambda x: x.flip(2).flip(3)),
            ("transpose", lambda x: x.transpose(2, 3)), ("rot90", lambda x: x.transpose(2, 3).flip(3)),
            ("rot270", lambda x: x.transpose(2, 3).flip(2)), ("anti_transpose", lambda x: x.transpose(2, 3).flip(2, 3)))


def tta_views(name: str, *, scales: Iterable[float] = (), crop: float | None = None, n: int = 0,
              beta: float | None = None, augment: Augment | None = None, seed: int = 0) -> Views:
    """The view set called ``name`` (see the module docstring); ``augment`` draws ``n`` passes of
    the training augmentation."""
    if name == "none":
        extra: tuple = ()
    elif name == "flip_h":
        extra = DIHEDRAL[:1]
    elif name == "flip_v":
        extra = DIHEDRAL[1:2]
    elif name == "flips":  # the symmetries that keep the orientation (ELPV's busbars stay horizontal)
        extra = DIHEDRAL[:3]
    elif name == "dihedral":
        extra = DIHEDRAL
    elif name == "multiscale":
        scales = [s for s in scales if s != 1.0]
        if not scales:
            raise ConfigError("evaluate.tta.scales: multiscale needs at least one scale other than 1.0")
        extra = tuple((f"scale_{s:g}", _rescale(s)) for s in scales)
    elif name == "five_crop":
        if crop is None or not 0 < crop < 1:
            raise ConfigError(f"evaluate.tta.crop = {crop}: five_crop needs a fraction of the side in (0, 1)")
        extra = tuple((f"crop_{w}", _crop(crop, w)) for w in ("c", "tl", "tr", "bl", "br"))
    elif name == "augment":
        if augment is None or not augment.active or n < 1:
            raise ConfigError("evaluate.tta: augment needs n >= 1 and an augment config that changes images")
        extra = tuple((f"augment_{i}", _augmented(augment, seed, i)) for i in range(n))
    else:
        raise ConfigError(f"evaluate.tta.views = {name!r}: not one of {', '.join(VIEW_SETS)}")
    if beta is not None and not 0 <= beta <= 1:
        raise ConfigError(f"evaluate.tta.beta = {beta}: must be in [0, 1] (the plain prediction's weight)")
    return Views(name, extra, beta)


@torch.no_grad()
def predict(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], views: Views,
            *, autocast: Callable[[], object] | None = None) -> dict[str, torch.Tensor]:
    """Plain and TTA probabilities (float64, CPU, ``(N, classes)``) and the labels, in one pass.
    Each view's probabilities are added to a running sum for the batch and then dropped."""
    was = model.training
    model.eval()
    plain, tta, labels = [], [], []

    def probs(x: torch.Tensor) -> torch.Tensor:
        with autocast() if autocast else _null():
            logits = model(x)
        return logits.float().softmax(1).double()

    for x, y in batches:
        # Views (transposes, flips) come back in the batch's own memory layout (channels_last on CUDA).
        fmt = (torch.channels_last if x.dim() == 4 and not x.is_contiguous()
               and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
        p0 = probs(x)
        total = torch.zeros_like(p0)
        for _, view in views.extra:
            total += probs(view(x).contiguous(memory_format=fmt))
        if not views.extra:
            pt = p0
        elif views.beta is None:
            pt = (p0 + total) / len(views)
        else:
            pt = views.beta * p0 + (1 - views.beta) * total / len(views.extra)
        plain.append(p0.cpu())
        tta.append(pt.cpu())
        labels.append(y.cpu())
    model.train(was)
    return {"plain": torch.cat(plain), "tta": torch.cat(tta), "labels": torch.cat(labels)}


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# --- metrics --------------------------------------------------------------------------------

def confusion(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """``m[true, predicted]`` counts."""
    m = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(m, (labels, predicted), 1)
    return m


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
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


def bootstrap_accuracy(correct: np.ndarray, *, resamples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
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
                           classes: list[str], *, ece_bins: int = 15, top_k: Iterable[int] = (3, 5),
                           bootstrap: int = 1000, seed: int = 0) -> dict:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    c = len(classes)
    pred = probs.argmax(1)
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
        lo, hi = bootstrap_accuracy(correct, resamples=bootstrap, seed=seed)
        out["accuracy_ci95"] = [lo, hi]
    out["per_class"] = {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                               "support": int(support[i])} for i, name in enumerate(classes)}
    out["confusion"] = m.tolist()
    return out


def most_confused(m: np.ndarray, classes: list[str], limit: int = 10) -> list[dict]:
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

