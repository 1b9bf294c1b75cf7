"""Images decoded once, at the working size, and served as batches.

Contract: :func:`load_split` decodes the images of one split (paths relative to the dataset
root, never followed outside it) into a uint8 tensor ``(N, C, size, size)``: the shorter side
resized to ``size``, then centre-cropped. ``C`` is 1 when every image decodes to
grayscale (ELPV), else 3. Decoding happens once per stage, in parallel processes; an epoch is
then index slicing of that tensor, so there is nothing left for DataLoader workers to do but
copy (the cache for 2,624 ELPV images at 224 px is 132 MB).

:class:`Batches` yields ``(x, y)`` with ``x`` float in [0, 1] on the device, shuffled and
augmented by a generator seeded from ``(seed, epoch)``: an epoch's batches do not depend on what
ran before it, which is what makes a resumed run equal an uninterrupted one.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from PIL import Image

from recipe.data.images import fit_square, load_image
from recipe.core.errors import DataError
from recipe.core.paths import is_within
from recipe.data.sources import tags_of
from recipe.data.split import LABELS, TARGET_PREFIX


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,); several labels per image: float32 (N, classes), 1 where the image holds one
    paths: list[str]
    classes: list[str]
    targets: torch.Tensor | None = None  # float32 (N, classes): soft training targets, when the split has them

    @property
    def multi_label(self) -> bool:
        """Several labels per image (a split with label lists): one yes/no answer per class."""
        return self.labels.dim() == 2

    @property
    def training_targets(self) -> torch.Tensor:
        """What the loss is trained against: the soft targets if there are any, else the labels."""
        return self.labels if self.targets is None else self.targets

    def __len__(self) -> int:
        return len(self.labels)

    def __add__(self, other: "ImageSet") -> "ImageSet":
        """Both sets' images in one (``fit_on: train+valid``): same classes, size and channels."""
        if other.classes != self.classes or other.images.shape[1:] != self.images.shape[1:]:
            raise DataError(f"cannot join image sets: classes {self.classes} / {other.classes}, "
                            f"shapes {tuple(self.images.shape[1:])} / {tuple(other.images.shape[1:])}")
        if (self.targets is None) != (other.targets is None):
            raise DataError("cannot join image sets: one has soft targets and the other has none")
        targets = None if self.targets is None else torch.cat([self.targets, other.targets])
        return ImageSet(torch.cat([self.images, other.images]), torch.cat([self.labels, other.labels]),
                        self.paths + other.paths, self.classes, targets)


def load_split(table: pd.DataFrame, root: Path, *, split: str, size: int, classes: list[str],
               workers: int = 0) -> ImageSet:
    rows = table[table["split"] == split]
    if rows.empty:
        raise DataError(f"split {split!r} is empty")
    root = Path(root).resolve()
    paths = list(rows["path"])
    files = []
    for p in paths:
        f = (root / p).resolve()
        if not is_within(f, root):
            raise DataError(f"{p}: path leaves the dataset root {root}; refusing to read it")
        files.append(f)
    index = {c: i for i, c in enumerate(classes)}
    multi = LABELS in rows.columns
    given = {t for v in rows[LABELS] for t in tags_of(v)} if multi else set(rows["label"])
    unknown = sorted(given - set(index))
    if unknown:
        raise DataError(f"split {split!r}: labels {unknown} are not among the classes {classes}")
    # The audit measured every file it kept and refused any over audit.max_pixels: no file is
    # decoded here at more pixels than the audit saw (one limit, the audit's, for both).
    limits = ((rows["width"].astype(int) * rows["height"].astype(int)).tolist()
              if {"width", "height"} <= set(rows.columns) else None)
    images = decode_all(files, size=size, workers=workers, max_pixels=limits)
    if multi:  # one row per image, 1 in the column of each label it holds
        labels = torch.zeros(len(rows), len(classes))
        for k, v in enumerate(rows[LABELS]):
            labels[k, [index[t] for t in tags_of(v)]] = 1.0
        return ImageSet(images, labels, paths, classes)
    labels = torch.tensor([index[label] for label in rows["label"]], dtype=torch.int64)
    return ImageSet(images, labels, paths, classes, soft_targets(rows, classes))


def soft_targets(rows: pd.DataFrame, classes: list[str]) -> torch.Tensor | None:
    """``(N, classes)`` target distributions from the split's ``target_<class>`` columns, or None.

    Two classes need one column (the other class gets the complement); more classes need one
    per class, summing to 1 on every row.
    """
    given = {c[len(TARGET_PREFIX):]: c for c in rows.columns if c.startswith(TARGET_PREFIX)}
    if not given:
        return None
    unknown = sorted(set(given) - set(classes))
    if unknown:
        raise DataError(f"split columns {[given[u] for u in unknown]} name no class (classes: {classes})")
    if len(classes) == 2 and len(given) == 1:
        (name,) = given
        p = torch.tensor(rows[given[name]].to_numpy(dtype=float), dtype=torch.float32)
        t = torch.stack([p, 1 - p], 1)
        return t if classes[0] == name else t.flip(1)
    if set(given) != set(classes):
        raise DataError(f"split has target columns for {sorted(given)}; soft targets need one per class {classes}")
    t = torch.tensor(rows[[given[c] for c in classes]].to_numpy(dtype=float), dtype=torch.float32)
    if not torch.allclose(t.sum(1), torch.ones(len(t)), atol=1e-4) or (t < 0).any():
        raise DataError("split's target_<class> columns are not a probability distribution on every row")
    return t


def decode_all(files: list[Path], *, size: int, workers: int = 0, max_pixels: list[int] | None = None) -> torch.Tensor:
    """uint8 ``(N, C, size, size)``; C = 1 if every image decodes to grayscale, else 3. A file
    over its ``max_pixels`` entry (default: Pillow's limit) is refused before it is decoded."""
    workers = workers or os.cpu_count() or 1
    limits = max_pixels if max_pixels is not None else [Image.MAX_IMAGE_PIXELS] * len(files)
    args = [(f, size, limit) for f, limit in zip(files, limits, strict=True)]
    if workers == 1 or len(files) < 64:
        arrays = [_decode(a) for a in args]
    else:
        with ProcessPoolExecutor(workers) as pool:
            arrays = list(pool.map(_decode, args, chunksize=32))
    if any(a.shape[0] == 3 for a in arrays):
        arrays = [np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a for a in arrays]
    return torch.from_numpy(np.stack(arrays))


def _decode(arg: tuple[Path, int]) -> np.ndarray:
    path, size, max_pixels = arg
    try:
        im = load_image(path, max_pixels)  # 8-bit L or RGB
    except Exception as exc:  # the audit should have dropped it; say which file
        raise DataError(f"{path}: cannot decode ({exc})") from None
    a = np.asarray(fit_square(im, size), dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy()


class Batches:
    """Batches of one :class:`ImageSet` (or of cached feature vectors) for one device."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, shuffle: bool, seed: int,
                 device: torch.device, augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                 drop_last: bool = False, channels_last: bool = False, shard: tuple[int, int] | None = None,
                 weights: torch.Tensor | None = None,
                 mix: Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
                 | None = None):
        self.x, self.y = x, y
        # mix(x, y, gen): each batch of images blended with itself after the augmentation, and its
        # targets with it (mixup or cutmix, recipe.train.augment.mix); not for feature vectors
        self.mix = mix if x.dim() == 4 else None
        # With weights (one per image), each epoch draws len(y) images with replacement in proportion
        # to them (a class-balanced sampler), seeded like the shuffle; without, a permutation.
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        # Under DDP (rank, world): every rank draws the same global batch (order and augmentation)
        # and keeps its contiguous slice; global_n is the size of the global batch last yielded.
        self.shard, self.global_n = shard, 0
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.device, self.augment, self.drop_last = device, augment, drop_last
        self.channels_last = channels_last and x.dim() == 4
        if device.type == "cuda":  # page-locked host memory lets copies overlap compute
            self.x, self.y = self.x.pin_memory(), self.y.pin_memory()

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last and n >= self.batch_size else -(-n // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        n = len(self.y)
        if not self.shuffle:
            order = torch.arange(n)
        elif self.weights is not None:
            order = torch.multinomial(self.weights, n, replacement=True, generator=gen)
        else:
            order = torch.randperm(n, generator=gen)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.x[idx].to(self.device, non_blocking=True)
            y = self.y[idx].to(self.device, non_blocking=True)
            if x.dtype == torch.uint8:
                x = x.float().div_(255)
            if self.augment is not None:
                x = self.augment(x, gen)
            if self.mix is not None:
                x, y = self.mix(x, y, gen)
            self.global_n = len(y)
            if self.shard is not None:
                rank, world = self.shard
                x, y = torch.tensor_split(x, world)[rank], torch.tensor_split(y, world)[rank]
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Epoch 0's batches: what evaluation and feature passes (unshuffled) use."""
        return self.epoch(0)
