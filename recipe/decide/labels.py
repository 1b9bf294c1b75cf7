"""Several labels per image (data.task: multi_label) in the two forms the stages pass them
around: a label list as the pipeline writes it (``recipe.data.sources``: the labels joined by
``TAG_SEP``) and a 0/1 row per image, one column per class; and a decision threshold as printed
(one number, or one per label). numpy only: ``predict``'s ONNX path imports it without torch."""
from __future__ import annotations

from typing import Iterable

import numpy as np

from recipe.data.sources import TAG_SEP, tags_of


def hot(values: Iterable[str], classes: list[str]) -> np.ndarray:
    """Label lists as ``(N, len(classes))`` 0/1 (int64)."""
    return np.array([[c in tags_of(v) for c in classes] for v in values], dtype=np.int64).reshape(-1, len(classes))


def joined(rows, classes: list[str]) -> list[str]:
    """0/1 (or boolean) rows as label lists: the classes of each row's non-zero columns, joined."""
    return [TAG_SEP.join(c for c, v in zip(classes, row) if v) for row in np.asarray(rows)]


def threshold_text(t) -> str:
    """A decision threshold as printed: one number, or several labels' own (their range)."""
    if isinstance(t, (list, tuple)):
        return f"{min(t):.3f}..{max(t):.3f} (one per label)" if len(set(t)) > 1 else f"{t[0]:.3f} (every label)"
    return f"{t:.3f}"
