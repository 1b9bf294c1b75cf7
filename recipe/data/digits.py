"""scikit-learn's bundled handwritten digits, written as an ImageFolder (no download).

``python -m recipe.data.digits OUT_DIR [--limit N] [--long-tail R]`` writes the 1,797 8x8 images of
:func:`sklearn.datasets.load_digits` (values 0..16, ten classes) as 8-bit grayscale PNGs at their
native size, ``OUT_DIR/<digit>/<digit>_<index>.png`` (index: the row of ``load_digits``, four
digits, so names are stable; pixel = round(value * 255 / 16)). ``--limit N`` writes a stratified
subset of N images (seed 0). ``--long-tail R`` keeps about ``180 * R**k`` images of digit ``k``
(a seeded subset of each class; R = 0.75: 180 zeros down to 13 nines), a long-tailed set. Then point the pipeline at it; nothing else needs changing
(``conf/data/folder.yaml`` picks the upright augmentation, ``train.image_size: auto`` 64 px, and
``resize.image_size: auto`` finds nothing to grow into):

    dvc exp run -S data=folder -S data.path=OUT_DIR

``--multi-label N`` writes N canvases of one to three digits each instead, tagged with the digits
present, in fastai's planet layout (:func:`write_multi_digits`):

    dvc exp run -S data=csv -S data.path=OUT_DIR -S data.label_col=tags -S data.task=multi_label
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def long_tail_rows(labels: np.ndarray, ratio: float, head: int = 180, seed: int = 0) -> np.ndarray:
    """The rows of a long-tailed subset: digit ``k`` keeps ``round(head * ratio**k)`` of its images
    (at least one, at most all), drawn with ``seed``."""
    if not 0 < ratio <= 1:
        raise ValueError(f"--long-tail {ratio}: must be in (0, 1]")
    rng = np.random.default_rng(seed)
    keep = []
    for k in np.unique(labels):
        rows = np.flatnonzero(labels == k)
        n = min(len(rows), max(1, round(head * ratio ** int(k))))
        keep.append(rng.choice(rows, size=n, replace=False))
    return np.sort(np.concatenate(keep))


def write_digits(out: Path, limit: int | None = None, long_tail: float | None = None) -> int:
    """Write the digits (all, a stratified seeded subset of ``limit``, or the long-tailed subset of
    :func:`long_tail_rows`) under ``out``; return how many. Refuses (FileExistsError) an ``out``
    that exists and is not empty."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty")
    images, labels = load_digits(return_X_y=True)
    rows = np.arange(len(labels))
    if limit is not None and limit < len(rows):
        if limit < 10:
            raise ValueError(f"--limit {limit}: a stratified subset needs at least 10 (one per class)")
        rows, _ = train_test_split(rows, train_size=limit, stratify=labels, random_state=0)
    if long_tail is not None:
        tail = long_tail_rows(labels, long_tail)
        rows = tail[np.isin(tail, rows)]
    for i in sorted(rows):
        pixels = np.floor(images[i].reshape(8, 8) * 255 / 16 + 0.5).astype(np.uint8)
        folder = out / str(labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{labels[i]}_{i:04d}.png")
    return len(rows)


def write_multi_digits(out: Path, n: int, seed: int = 0) -> int:
    """Several labels per image, in fastai's planet layout: ``n`` 16x16 canvases, each holding one
    to three digits of ``load_digits`` (drawn with ``seed``, each 8x8 digit in its own quadrant,
    the rest black), as ``out/train/<index>.png`` and ``out/labels.csv`` (``name``, ``tags``: the
    digits present, space-separated). Refuses an ``out`` that exists and is not empty."""
    from sklearn.datasets import load_digits

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty")
    if n < 1:
        raise ValueError(f"--multi-label {n}: at least 1 image")
    images, labels = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    (out / "train").mkdir(parents=True)
    rows = ["name,tags"]
    for i in range(n):
        canvas = np.zeros((16, 16), dtype=np.uint8)
        count = int(rng.integers(1, 4))
        picks = rng.choice(len(labels), size=count, replace=False)
        for quadrant, row in zip(rng.choice(4, size=count, replace=False), picks):
            top, left = 8 * (quadrant // 2), 8 * (quadrant % 2)
            canvas[top:top + 8, left:left + 8] = np.floor(images[row].reshape(8, 8) * 255 / 16 + 0.5)
        Image.fromarray(canvas).save(out / "train" / f"{i:05d}.png")
        rows.append(f"{i:05d}.png," + " ".join(str(d) for d in sorted({int(labels[r]) for r in picks})))
    (out / "labels.csv").write_text("\n".join(rows) + "\n")
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipe.data.digits", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, metavar="OUT_DIR", help="where the ImageFolder goes (absent or empty)")
    parser.add_argument("--limit", type=int, default=None, help="a stratified subset of N images (seed 0)")
    parser.add_argument("--long-tail", type=float, default=None, metavar="R",
                        help="digit k keeps about 180 * R**k images (R = 0.75: 180 down to 13)")
    parser.add_argument("--multi-label", type=int, default=None, metavar="N",
                        help="N 16x16 canvases of one to three digits each, tagged with the digits present "
                             "(labels.csv + train/, fastai's planet layout)")
    args = parser.parse_args(argv)
    try:
        n = (write_multi_digits(args.out, args.multi_label) if args.multi_label is not None
             else write_digits(args.out, args.limit, args.long_tail))
    except (FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {n} images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
