"""The shipped model: one or more checkpoints, each at its own size, with TTA views and a threshold.

Contract: an :class:`Ensemble` takes float images ``(N, C, size, size)`` in [0, 1], ``size``
being its largest member's. Each member sees the batch resized to its own size (bilinear,
antialiased), then each TTA view of it; the member's probabilities are the mean of the views'
softmax probabilities (or fast.ai's ``beta`` blend), and the ensemble's are the mean over members.
A single checkpoint without views is the one-member case, so ``select``, ``evaluate``,
``predict`` and the MLflow model run the same code. :func:`decide` turns probabilities into
classes: the argmax, or for two classes ``p[:, 1] >= threshold``.

A bundle (:func:`save_bundle`, :func:`load_bundle`) is one ``torch.save`` file of tensors and
plain values (``weights_only=True`` loads it): every member's weights and metadata, the view set
and its settings, the logit adjustment (long tails: select's), the threshold (several labels per
image: ``multi_label``, each member's sigmoids, a threshold per label). A stage's checkpoint file
loads as a one-member bundle.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recipe.core.errors import DataError
from recipe.decide.tta import Views, plain_views, tta_views
from recipe.train.augment import Augment
from recipe.train.session import CHECKPOINT_FORMAT, load_checkpoint, load_state, model_from_state

BUNDLE_FORMAT = "bundle-1"


def fit_size(x: torch.Tensor, size: int) -> torch.Tensor:
    """The batch at ``size`` px (square): unchanged when it already is."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format
    out = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
    return out.contiguous(memory_format=fmt)


def view_probs(model: nn.Module, x: torch.Tensor, views: Views, autocast=None, plain: bool = True,
               multi_label: bool = False) -> list[torch.Tensor]:
    """Softmax probabilities (float64) of the plain batch (unless ``plain`` is false) and of each
    extra view, in order; with ``multi_label``, each label's sigmoid."""
    fmt = (torch.channels_last if x.dim() == 4 and not x.is_contiguous()
           and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
    out = []
    for view in ((None,) if plain else ()) + tuple(v for _, v in views.extra):
        xv = x if view is None else view(x).contiguous(memory_format=fmt)
        with autocast() if autocast else nullcontext():
            logits = model(xv)
        out.append((logits.float().sigmoid() if multi_label else logits.float().softmax(1)).double())
    return out


def blend(per_view: list, views: Views):
    """The TTA probabilities from the plain view (first) and the extra ones: their mean, or
    ``beta * plain + (1 - beta) * mean(extra)``. Works on tensors and numpy arrays alike."""
    if len(per_view) == 1:
        return per_view[0]
    if views.beta is None:
        return sum(per_view) / len(per_view)
    return views.beta * per_view[0] + (1 - views.beta) * sum(per_view[1:]) / (len(per_view) - 1)


class Ensemble(nn.Module):
    """Members (each a classifier and its size), one view set for all, a decision threshold."""

    def __init__(self, members: list[tuple[nn.Module, int]], *, classes: list[str], channels: int,
                 views: Views | None = None, threshold: float | list[float] | None = None,
                 names: list[str] | None = None, adjust: list[float] | None = None, multi_label: bool = False):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList([m for m, _ in members])
        self.sizes = [int(s) for _, s in members]
        self.size = max(self.sizes)
        self.classes = list(classes)
        self.channels = int(channels)
        self.views = views or plain_views()
        self.threshold = threshold
        self.multi_label = multi_label  # several labels per image: a sigmoid per label, a threshold per label
        self.names = list(names or [f"member{i}" for i in range(len(members))])
        self.autocast = None  # a context factory (recipe.train.fit.autocast) for GPU runs
        # the logit adjustment, tau * log(train prior) per class (select's): subtracted from the log probabilities
        self.register_buffer("adjust", None if adjust is None else torch.tensor(adjust, dtype=torch.float64),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.with_plain(x)[0]

    def with_plain(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The probabilities with the views (and the logit adjustment), and plainly (each member's
        first view, no adjustment): one pass for both."""
        total = plain = None
        for model, size in zip(self.members, self.sizes):
            per_view = view_probs(model, fit_size(x, size), self.views, self.autocast, multi_label=self.multi_label)
            p = blend(per_view, self.views)
            total = p if total is None else total + p
            plain = per_view[0] if plain is None else plain + per_view[0]
        total = total / len(self.members)
        if self.adjust is not None:  # p / prior**tau, renormalised (recipe.decide.select.adjusted)
            total = torch.softmax(torch.log(total.clamp_min(1e-300)) - self.adjust.to(total), dim=1)
        return total, plain / len(self.members)

    def decide(self, probs):
        return decide(probs, self.threshold, multi_label=self.multi_label)


def decide(probs, threshold: float | list[float] | None, multi_label: bool = False) -> np.ndarray:
    """Predicted classes: argmax, or with a threshold (two classes) ``p[:, 1] >= threshold``. With
    ``multi_label``: ``(N, labels)`` 0/1, each label's ``p >= its threshold`` (0.5 without one)."""
    probs = np.asarray(probs)
    if multi_label:
        return (probs >= np.asarray(0.5 if threshold is None else threshold, dtype=np.float64)).astype(np.int64)
    if threshold is None:
        return probs.argmax(1)
    if probs.shape[1] != 2:
        raise ValueError(f"a decision threshold needs two classes, not {probs.shape[1]}")
    return (probs[:, 1] >= threshold).astype(np.int64)


def views_from(spec: dict | None, seed: int) -> Views:
    """The view set a bundle names (``{"name", "scales", "crop", "n", "beta", "augment"}``)."""
    if not spec or spec["name"] == "none":
        return plain_views()
    aug = Augment(**spec["augment"]) if spec.get("augment") else None
    return tta_views(spec["name"], scales=spec["scales"], crop=spec["crop"], n=spec["n"], beta=spec["beta"],
                     augment=aug, seed=seed)


def save_bundle(path: Path, members: list[tuple[str, Path]], *, views: dict | None, threshold: float | list[float] | None,
                seed: int, info: dict, adjust: list[float] | None = None) -> Path:
    """One file holding the members' checkpoints (read from ``members``: (name, checkpoint path)),
    the view set, the logit adjustment (tau * log prior per class, or None) and the threshold;
    ``info`` is extra metadata (the selection's summary)."""
    states = []
    classes = channels = None
    for name, ckpt in members:
        state = load_state(ckpt)
        if classes is not None and list(state["classes"]) != classes:
            raise DataError(f"{ckpt}: classes {state['classes']} differ from the other members' {classes}")
        classes, channels = list(state["classes"]), state["channels"]
        states.append({**state, "name": name})
    bundle = {"format": BUNDLE_FORMAT, "members": states, "classes": classes, "channels": channels,
              "size": max(s["size"] for s in states), "views": views, "threshold": threshold, "seed": seed,
              "info": info, "adjust": adjust}
    if any(s.get("multi_label") for s in states):  # only then: a bundle of one label per image keeps its bytes
        bundle["multi_label"] = True
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(bundle, tmp)
    tmp.replace(path)
    return path


def load_bundle(path: Path) -> tuple[Ensemble, dict]:
    """An :class:`Ensemble` (CPU, eval mode) from a bundle or a stage's checkpoint, and the
    metadata (everything but the weights)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: model file not found (run the stage that writes it)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt == CHECKPOINT_FORMAT:
        model, meta = load_checkpoint(path)
        ens = Ensemble([(model, meta["size"])], classes=meta["classes"], channels=meta.get("channels", 3),
                       names=[meta.get("stage", path.stem)], multi_label=bool(meta.get("multi_label")))
        return ens.eval(), {**meta, "members": [meta.get("stage", path.stem)], "views": None, "threshold": None}
    if fmt != BUNDLE_FORMAT:
        raise DataError(f"{path}: not a finetune-recipe checkpoint or bundle")
    members = []
    for m in state["members"]:
        model = model_from_state(m)
        members.append((model, m["size"]))
    ens = Ensemble(members, classes=state["classes"], channels=state["channels"],
                   views=views_from(state["views"], state["seed"]), threshold=state["threshold"],
                   names=[m["name"] for m in state["members"]], adjust=state.get("adjust"),
                   multi_label=bool(state.get("multi_label")))
    meta = {k: v for k, v in state.items() if k != "members"}
    meta["members"] = [{k: v for k, v in m.items() if k != "model"} for m in state["members"]]
    return ens.eval(), meta
