"""Test-time augmentation: named view sets and one prediction pass over them.

Contract:

- :data:`VIEW_SETS` is the registry of view sets: a name and the function that builds its views
  from the ``select.tta`` settings. Adding a view set is one entry here; :func:`tta_views`
  checks ``select.view_sets`` and ``select.views`` against this registry's keys (a one-line error listing them).
  A view maps a batch of images in
  [0, 1] to a batch the network accepts.
- :func:`tta_views` builds the set called ``name``.
- :func:`predict` runs a model over batches once, and for each batch every view in turn. It
  returns the plain probabilities (the unchanged image) and the TTA probabilities: the mean of
  the views' *softmax probabilities* (never of logits or log-probabilities), or, with ``beta``,
  fast.ai's blend ``beta * plain + (1 - beta) * mean(other views)``. Only running sums per
  batch are kept, so memory does not grow with the number of views.

Nothing here reads files or talks to MLflow; :mod:`recipe.decide.evaluate` is the stage.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from recipe.core.errors import ConfigError
from recipe.train.augment import Augment

View = Callable[[torch.Tensor], torch.Tensor]


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


_PROBE = torch.arange(9.0).reshape(1, 1, 3, 3)  # no symmetry of its own: each flip or turn draws it differently


def _key(x: torch.Tensor) -> tuple[float, ...]:
    return tuple(x.flatten().tolist())


def _drawn(view: View) -> tuple[float, ...]:
    return _key(view(_PROBE))


def trained_symmetries(*, flip_h: bool, flip_v: bool, rot90: bool) -> frozenset[tuple[float, ...]]:
    """The flips and turns a training augmentation shows the network: the group its mirrors and
    quarter turns generate (none: the image alone; both mirrors: four; turns and a mirror: all
    eight), each as it draws a probe picture."""
    gens = [fn for on, fn in ((flip_h, DIHEDRAL[0][1]), (flip_v, DIHEDRAL[1][1]), (rot90, DIHEDRAL[4][1])) if on]
    seen, todo = {_key(_PROBE)}, [_PROBE]
    while todo:
        x = todo.pop()
        for y in (g(x) for g in gens):
            if _key(y) not in seen:
                seen.add(_key(y))
                todo.append(y)
    return frozenset(seen)


def untrained_views(views: Views, symmetries: frozenset[tuple[float, ...]]) -> list[str]:
    """The labels of the set's views that are a flip or turn outside ``symmetries`` (views of other
    kinds, scales and crops, are not judged here)."""
    dihedral = {label for label, _ in DIHEDRAL}
    return [label for label, fn in views.extra if label in dihedral and _drawn(fn) not in symmetries]


@dataclass(frozen=True)
class ViewSettings:
    """The ``select.tta`` settings a view set may use (each set reads only its own)."""
    scales: tuple[float, ...]
    crop: float
    n: int
    augment: Augment | None
    seed: int


def _multiscale(s: ViewSettings) -> tuple:
    scales = [x for x in s.scales if x != 1.0]
    if not scales:
        raise ConfigError("select.tta.scales: multiscale needs at least one scale other than 1.0")
    return tuple((f"scale_{x:g}", _rescale(x)) for x in scales)


def _five_crop(s: ViewSettings) -> tuple:
    if not 0 < s.crop < 1:
        raise ConfigError(f"select.tta.crop = {s.crop}: five_crop needs a fraction of the side in (0, 1)")
    return tuple((f"crop_{w}", _crop(s.crop, w)) for w in ("c", "tl", "tr", "bl", "br"))


def _augment_views(s: ViewSettings) -> tuple:
    if s.augment is None or not s.augment.active or s.n < 1:
        raise ConfigError("select.tta: augment needs n >= 1 and an augment config that changes images")
    return tuple((f"augment_{i}", _augmented(s.augment, s.seed, i)) for i in range(s.n))


# The registry: view-set name -> the extra views (the plain image is always included).
VIEW_SETS: dict[str, Callable[[ViewSettings], tuple]] = {
    "none": lambda s: (),
    "flip_h": lambda s: DIHEDRAL[:1],
    "flip_v": lambda s: DIHEDRAL[1:2],
    "flips": lambda s: DIHEDRAL[:3],  # the symmetries that keep the orientation (ELPV's busbars stay horizontal)
    "dihedral": lambda s: DIHEDRAL,
    "multiscale": _multiscale,
    "five_crop": _five_crop,
    "augment": _augment_views,
}


def tta_views(name: str, *, scales: Iterable[float], crop: float, n: int, beta: float | None,
              augment: Augment | None, seed: int) -> Views:
    """The view set called ``name`` (a key of :data:`VIEW_SETS`); ``augment`` draws ``n`` passes
    of the training augmentation."""
    if name not in VIEW_SETS:
        raise ConfigError(f"select view set {name!r}: not one of {', '.join(VIEW_SETS)}")
    if beta is not None and not 0 <= beta <= 1:
        raise ConfigError(f"select.tta.beta = {beta}: must be in [0, 1] (the plain prediction's weight)")
    extra = VIEW_SETS[name](ViewSettings(tuple(scales), crop, n, augment, seed))
    return Views(name, tuple(extra), beta)


def plain_views() -> Views:
    """No augmentation: the image alone (the stage table scores every checkpoint so)."""
    return Views("none", (), None)


@torch.no_grad()
def predict(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], views: Views,
            *, autocast: Callable[[], object] | None = None, multi_label: bool = False) -> dict[str, torch.Tensor]:
    """Plain and TTA probabilities (float64, CPU, ``(N, classes)``; with ``multi_label`` each
    label's sigmoid) and the labels, in one pass. Each view's probabilities are added to a running
    sum for the batch and then dropped."""
    was = model.training
    model.eval()
    plain, tta, labels = [], [], []

    def probs(x: torch.Tensor) -> torch.Tensor:
        with autocast() if autocast else nullcontext():
            logits = model(x)
        return (logits.float().sigmoid() if multi_label else logits.float().softmax(1)).double()

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

