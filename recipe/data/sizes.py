"""Sizes from the data: what ``train.image_size: auto``, ``resize.image_size: auto`` and
``train.batch_size: auto`` become.

The rules (README, "Sizes from the data"): the image sizes from the median shorter side ``s`` of
the training images (split.csv's ``width`` and ``height``, written by the audit), the batch from
the number of training images:

- ``train.image_size``: ``s`` rounded down to a multiple of 32, kept within ``train.auto_size``'s
  [min, max] (conf/: 128 and 128; ELPV's 300 px cells and 8 px digits both get 128, the best
  of 32, 64, 96 and 128 on digits' valid split).
- ``resize.image_size``: ``s`` rounded down to a multiple of 32, at most RESIZE_MAX; when that is not
  larger than the size the model was trained at, there is nothing to grow into and resize passes
  its input on untrained (ELPV: 224; digits: none, where 224 px would be a 28x upscale).

- ``train.batch_size``: the largest of ``train.auto_batch.max``, its half, its quarter, ... (not under
  ``min``) that cuts the train split into at least ``steps`` batches an epoch. The schedules count
  epochs, so a small set would otherwise get few updates (conf/: 32, 8 and 32; ELPV's 1,575 train
  images and the digits' 1,078 get 32, the long-tailed digits' 407 get 8).

The bounds are conf/ values (``train.auto_size``, ``train.auto_batch``); this module only applies them.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from recipe.core.errors import DataError


def median_side(split_csv: Path, split: str = "train") -> float:
    """The median shorter side (px) of one split's images."""
    table = pd.read_csv(split_csv, keep_default_na=False, dtype={"path": str, "label": str})
    if not {"width", "height"} <= set(table.columns):
        raise DataError(f"{split_csv}: no width/height columns (rerun the split stage); size 'auto' needs them")
    rows = table[table["split"] == split]
    if rows.empty:
        raise DataError(f"{split_csv}: no {split} images to size 'auto' from")
    return float(rows[["width", "height"]].min(axis=1).median())


def _floor32(side: float) -> int:
    return int(side // 32) * 32


def train_size(value: int | str, side: float, *, low: int, high: int) -> int:
    """``train.image_size``: the number itself, or for ``auto`` the rule above."""
    if value != "auto":
        return int(value)
    return max(low, min(high, _floor32(side)))


def train_images(split_csv: Path) -> int:
    """How many images split.csv puts in train."""
    table = pd.read_csv(split_csv, keep_default_na=False, usecols=["split"])
    return int((table["split"] == "train").sum())


def train_batch(value: int | str, images: int, *, low: int, high: int, steps: int) -> int:
    """``train.batch_size``: the number itself, or for ``auto`` the rule above."""
    if value != "auto":
        return int(value)
    size = high
    while size // 2 >= low and images < steps * size:
        size //= 2
    return size


def resize_size(value: int | str | None, factor: float | None, *, from_size: int, side: float,
                high: int) -> int | None:
    """``resize.image_size`` for a model trained at ``from_size``: a number, ``factor`` times
    ``from_size``, or for ``auto`` the rule above; None when ``auto`` finds nothing larger."""
    if value is None:
        return int(round(from_size * factor))
    if value != "auto":
        return int(value)
    size = min(high, _floor32(side))
    return size if size > from_size else None
