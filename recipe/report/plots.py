"""Pictures a person would rather look at than read. Matplotlib on the Agg backend (no display).

Each function takes plain data and a path, writes one PNG and returns the path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after matplotlib.use("Agg"): no display needed
import numpy as np  # noqa: E402 - kept below the backend choice with the rest

from recipe.data.images import load_image  # noqa: E402 - kept below the backend choice with the rest
from recipe.data.sources import tags_of  # noqa: E402 - kept below the backend choice with the rest


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def class_histogram(counts: dict[str, int], path: Path, title: str = "Usable images per class") -> Path:
    labels = list(counts)
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(labels) + 2), 3.5))
    bars = ax.bar(range(len(labels)), [counts[k] for k in labels], color="tab:blue")
    ax.bar_label(bars)
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center")
    ax.set_ylabel("images")
    ax.set_title(title)
    return _save(fig, path)


def size_scatter(widths: Sequence[float], heights: Sequence[float], labels: Sequence[str], path: Path) -> Path:
    """One marker per distinct (width, height, label), its area growing with the image count."""
    import pandas as pd

    table = pd.DataFrame({"w": np.asarray(widths), "h": np.asarray(heights), "label": np.asarray(labels)})
    counts = table.groupby(["label", "w", "h"]).size().reset_index(name="n")
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for label, part in counts.groupby("label"):
        ax.scatter(part["w"], part["h"], s=12 + 200 * np.sqrt(part["n"] / counts["n"].max()), alpha=0.5, label=label)
    distinct = table.groupby(["w", "h"]).size()
    if len(distinct) <= 3:  # say it in words: a lone dot hides how many images sit on it
        for (w, h), n in distinct.items():
            ax.annotate(f"{n} images at {int(w)}x{int(h)}", (w, h), textcoords="offset points", xytext=(8, 8), fontsize=8)
    ax.set_xlabel("width (px)")
    ax.set_ylabel("height (px)")
    ax.set_title(f"Image sizes: {len(distinct)} distinct (usable images)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def image_grid(rows: list[tuple[str, list[tuple[Path, str]]]], path: Path, tile: float = 1.6) -> Path:
    """One row per (row title, [(image file, caption), ...]); images decoded as the pipeline does."""
    ncols = max((len(items) for _, items in rows), default=1) or 1
    fig, axes = plt.subplots(len(rows) or 1, ncols, figsize=(tile * ncols + 1, 1.25 * tile * max(len(rows), 1) + 0.3), squeeze=False)
    for r, (title, items) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(items):
                continue
            file, caption = items[c]
            im = load_image(file)
            ax.imshow(np.asarray(im), cmap="gray" if im.mode == "L" else None, vmin=0, vmax=255)
            ax.set_title(caption, fontsize=6)
        axes[r][0].text(-0.08, 0.5, title, transform=axes[r][0].transAxes, ha="right", va="center", fontsize=8)
    return _save(fig, path)


def split_counts(counts: dict[str, dict[str, int]], path: Path) -> Path:
    """Grouped bars: images per class in each split."""
    splits = list(counts)
    labels = sorted({k for c in counts.values() for k in c})
    width = 0.8 / max(len(splits), 1)
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(labels) + 2), 3.5))
    for i, s in enumerate(splits):
        bars = ax.bar(np.arange(len(labels)) + i * width, [counts[s].get(k, 0) for k in labels], width, label=s)
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(np.arange(len(labels)) + width * (len(splits) - 1) / 2, labels)
    ax.set_ylabel("images")
    ax.set_title("Images per class and split")
    ax.legend()
    return _save(fig, path)


def audit_pictures(manifest, report, *, files: Path, out: Path, seed: int, per_class: int, max_groups: int) -> None:
    """The audit's four pictures: class histogram, sizes, seeded samples per class, duplicate groups;
    with several labels per image, samples per label (each image under every label it holds) and
    a fifth, the labels' co-occurrence."""
    kept = manifest[manifest["keep"]]
    multi = report.get("task") == "multi_label"
    class_histogram(report["classes"], out / "class_histogram.png",
                    "Usable images holding each label" if multi else "Usable images per class")
    size_scatter(kept["width"], kept["height"], kept["label"], out / "sizes.png")
    rng = np.random.default_rng(seed)
    rows = []
    by_label = kept.groupby("label")
    if multi:
        tagged = kept.assign(tag=kept["label"].map(tags_of)).explode("tag")
        by_label = tagged[tagged["tag"].notna()].groupby("tag")
        cooccurrence(tagged, list(report["classes"]), out / "cooccurrence.png")
    for label, of_label in by_label:
        picked = of_label.iloc[np.sort(rng.choice(len(of_label), size=min(per_class, len(of_label)), replace=False))]
        rows.append((f"{label} ({len(of_label)})", [(files / p, p.rsplit("/", 1)[-1]) for p in picked["path"]]))
    image_grid(rows, out / "samples.png")
    readable = manifest[manifest["group"] >= 0]
    sizes = readable.groupby("group").size()
    dup_rows = []
    for gid in sizes[sizes > 1].sort_values(ascending=False, kind="stable").index[:max_groups]:
        members = readable[readable["group"] == gid].head(6)
        tiles = [(files / p, f"{lab}\n{p.rsplit('/', 1)[-1]}") for p, lab in zip(members["path"], members["label"])]
        dup_rows.append((f"group {gid} ({sizes[gid]})", tiles))
    image_grid(dup_rows or [("no duplicate groups", [])], out / "duplicates.png")


def cooccurrence(tagged, labels: list[str], path: Path) -> Path:
    """How many kept images hold both labels of each pair (the diagonal: each label's count), a
    row per image and label in ``tagged`` (its ``path`` and ``tag``)."""
    index = {t: i for i, t in enumerate(labels)}
    grid = np.zeros((len(labels), len(labels)), dtype=int)
    for _, tags in tagged[tagged["tag"].isin(index)].groupby("path")["tag"]:
        ids = [index[t] for t in set(tags)]
        grid[np.ix_(ids, ids)] += 1
    side = max(4, 0.5 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(grid, cmap="Blues")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > grid.max() / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    fig.colorbar(im, ax=ax, label="images")
    ax.set_title("Images holding both labels")
    return _save(fig, path)


def tensor_grid(images: np.ndarray, captions: Sequence[str], path: Path, title: str, tile: float = 1.6) -> Path:
    """Images ``(N, C, H, W)`` in [0, 1] exactly as given (e.g. a batch after augmentation)."""
    n = len(images)
    ncols = max(1, min(8, n))  # at least one column: an empty grid is a titled blank picture
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(tile * ncols, tile * nrows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, cap in zip(axes.flat, images, captions):
        img = np.clip(img.transpose(1, 2, 0), 0, 1)
        ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(cap, fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def lr_curve(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float],
             suggestions: dict[str, float], chosen: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses, color="0.75", lw=0.8, label="loss")
    ax.plot(lrs, smoothed, color="tab:blue", label="smoothed")
    ax.set_xscale("log")
    lo, hi = min(smoothed), max(smoothed)
    ax.set_ylim(lo - 0.1 * (hi - lo + 1e-9), min(hi, lo + 3 * (smoothed[0] - lo + 1e-9)) + 0.05 * (hi - lo + 1e-9))
    for (name, lr), color in zip(suggestions.items(), ("tab:red", "tab:orange", "tab:green", "tab:purple")):
        y = float(np.interp(np.log(lr), np.log(lrs), smoothed))
        ax.plot([lr], [y], "o", color=color, ms=8 if name == chosen else 5,
                label=f"{name}: {lr:.2e}" + (" (used)" if name == chosen else ""))
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title("Learning-rate range test")
    ax.legend(fontsize=7)
    return _save(fig, path)


def history(rows: Sequence[dict], path: Path, title: str) -> Path:
    """Train and valid loss, and valid accuracy, per epoch; phases shaded apart."""
    epochs = [r["epoch"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
    ax1.plot(epochs, [r["valid_loss"] for r in rows], "o-", label="valid")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend(fontsize=7)
    ax2.plot(epochs, [r["accuracy"] for r in rows], "o-", color="tab:green")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("valid accuracy")
    for ax in (ax1, ax2):
        for i in range(1, len(rows)):
            if rows[i].get("phase") != rows[i - 1].get("phase"):
                ax.axvline(epochs[i] - 0.5, color="0.6", ls="--", lw=0.8)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def lr_schedule(rows: Sequence[dict], path: Path, title: str) -> Path:
    """Every layer group's rate at every batch of a stage (fast.ai's ``sched.plot_lr``), one line
    per group, phases split by dashed lines; rows are history rows carrying ``rates`` (recipe.train.fit)."""
    steps: dict[str, tuple[list[int], list[float]]] = {}
    bounds, step = [], 0
    fig, ax = plt.subplots(figsize=(9, 3.2))
    for i, r in enumerate(rows):
        if i and r.get("phase") != rows[i - 1].get("phase"):
            bounds.append(step - 0.5)
        for rates in r.get("rates", []):
            for g, lr in rates.items():
                xs, ys = steps.setdefault(g, ([], []))
                xs.append(step)
                ys.append(lr)
            step += 1
    for g, (xs, ys) in steps.items():
        ax.plot(xs, ys, lw=1.2, label=g)
    for b in bounds:
        ax.axvline(b, color="0.6", ls="--", lw=0.8)
    ax.set_xlabel("batch (the stage's, counted across its phases)")
    ax.set_ylabel("learning rate")
    if steps:
        ax.set_yscale("log")
        ax.legend(fontsize=7, title="layer group", title_fontsize=7)
    else:
        ax.text(0.5, 0.5, "no training", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def dynamics(stages: Sequence[tuple[str, Sequence[dict]]], path: Path, title: str) -> Path:
    """Prediction dynamics across the recipe: one row per watched valid image, one column per
    epoch of every training stage in order, coloured by the probability of the image's true class
    (red 0, green 1); solid lines between stages, dashed between a stage's phases. ``stages``:
    (stage, rows of its dynamics.csv) in training order."""
    images: dict[int, tuple[str, str]] = {}
    columns: list[tuple[str, str, int]] = []  # (stage, phase, epoch)
    values: dict[tuple[int, int], float] = {}
    for stage, rows in stages:
        for r in rows:
            key = (stage, r["phase"], int(r["epoch"]))
            if not columns or columns[-1] != key:
                columns.append(key)
            images.setdefault(int(r["image"]), (r["label"], Path(r["path"]).name))
            values[(int(r["image"]), len(columns) - 1)] = float(r["p_true"])
    order = list(images)
    grid = np.full((max(1, len(order)), max(1, len(columns))), np.nan)
    for (image, col), v in values.items():
        grid[order.index(image), col] = v
    fig, ax = plt.subplots(figsize=(min(16, 2.5 + 0.35 * len(columns)), min(14, 1.5 + 0.22 * len(order))))
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    for j in range(1, len(columns)):
        if columns[j][0] != columns[j - 1][0]:
            ax.axvline(j - 0.5, color="black", lw=1.6)
        elif columns[j][1] != columns[j - 1][1]:
            ax.axvline(j - 0.5, color="black", ls="--", lw=0.8)
    starts = [j for j in range(len(columns)) if j == 0 or columns[j][0] != columns[j - 1][0]]
    for k, j in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(columns)
        ax.text((j + end - 1) / 2, -0.8, columns[j][0], ha="center", va="bottom", fontsize=8, fontweight="bold")
    ax.set_xticks(range(len(columns)), [str(c[2]) for c in columns], fontsize=6)
    ax.set_yticks(range(len(order)), [f"{images[i][0]}  {images[i][1]}" for i in order], fontsize=6)
    ax.set_xlabel("epoch of each stage (dashed: a new phase)")
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01).set_label("p(true class)", fontsize=8)
    if not values:
        ax.text(0.5, 0.5, "no dynamics recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title, fontsize=9, pad=16)
    return _save(fig, path)


def confusion(matrices: dict[str, np.ndarray], classes: Sequence[str], path: Path) -> Path:
    """Confusion matrices side by side (rows: actual, columns: predicted), each cell's count and,
    up to 12 classes, its share of the actual class (normalised per true class: recall on the
    diagonal); shaded by that share."""
    n = len(classes)
    side = max(3.0, 0.45 * n + 1.8)
    fig, axes = plt.subplots(1, len(matrices), figsize=(side * len(matrices), side), squeeze=False)
    for k, (ax, (title, m)) in enumerate(zip(axes.flat, matrices.items())):
        m = np.asarray(m)
        frac = m / np.maximum(m.sum(1, keepdims=True), 1)
        ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        if n <= 30:
            for i in range(n):
                for j in range(n):
                    text = f"{m[i, j]}\n{100 * frac[i, j]:.0f}%" if n <= 12 else str(m[i, j])
                    ax.text(j, i, text, ha="center", va="center", fontsize=8 if n <= 6 else 6,
                            color="white" if frac[i, j] > 0.5 else "black")
        ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(n), classes if k == 0 else [], fontsize=7)
        ax.set_xlabel("predicted")
        if k == 0:
            ax.set_ylabel("actual")
        ax.set_title(f"{title}: {np.trace(m)}/{m.sum()} right", fontsize=8)
    return _save(fig, path)


def label_confusion(tables: dict[str, Sequence], classes: Sequence[str], path: Path) -> Path:
    """Several labels per image: each label's 2x2 confusion (``[[tn, fp], [fn, tp]]``, recipe.core.metrics.label_confusion)
    as a row of four cells (present: decided yes, no; absent: yes, no), side by side for each table; each cell's
    count and its share of the actual answer (present or absent: the recall of each), shaded by that share."""
    n = len(classes)
    cols = ["present\n→ yes", "present\n→ no", "absent\n→ yes", "absent\n→ no"]
    fig, axes = plt.subplots(1, len(tables), figsize=(4.8 * len(tables), max(2.5, 0.32 * n + 1.6)), squeeze=False)
    for k, (ax, (title, m)) in enumerate(zip(axes.flat, tables.items())):
        m = np.asarray(m).reshape(n, 2, 2)
        counts = np.stack([m[:, 1, 1], m[:, 1, 0], m[:, 0, 1], m[:, 0, 0]], 1)
        present, absent = np.maximum(m[:, 1].sum(1), 1), np.maximum(m[:, 0].sum(1), 1)
        frac = counts / np.stack([present, present, absent, absent], 1)
        right = np.stack([frac[:, 0], 1 - frac[:, 1], 1 - frac[:, 2], frac[:, 3]], 1)  # dark: a right answer
        ax.imshow(right, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        if n <= 40:
            for i in range(n):
                for j in range(4):
                    ax.text(j, i, f"{counts[i, j]} ({100 * frac[i, j]:.0f}%)", ha="center", va="center", fontsize=6,
                            color="white" if right[i, j] > 0.5 else "black")
        ax.set_xticks(range(4), cols, fontsize=7)
        ax.set_yticks(range(n), classes if k == 0 else [], fontsize=7)
        if k == 0:
            ax.set_ylabel("label")
        wrong = int(counts[:, 1].sum() + counts[:, 2].sum())
        ax.set_title(f"{title}\n{wrong} wrong of {int(counts.sum())} yes/no answers", fontsize=8)
    return _save(fig, path)


def tta_gain(gain: dict[str, float], path: Path, title: str) -> Path:
    """Per-class change in recall (percentage points) from plain to TTA prediction."""
    names = list(gain)
    values = [100 * gain[k] for k in names]
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(names) + 2), 3))
    bars = ax.bar(range(len(names)), values, color=["tab:green" if v >= 0 else "tab:red" for v in values])
    ax.bar_label(bars, fmt="%+.1f", fontsize=7)
    ax.axhline(0, color="0.4", lw=0.8)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("recall gain (points)")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def selection(rows: Sequence[dict], chosen: dict, path: Path, title: str) -> Path:
    """Every (candidate, views) pair: valid log loss and accuracy against its cost per image
    (relative to one model), one marker shape per view set, the chosen one ringed."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    markers = dict(zip(dict.fromkeys(r["views"] for r in rows), "os^DvP*Xph"))
    kinds = {"single": "tab:blue", "snapshot": "tab:orange", "ensemble": "tab:green"}

    def kind(r):
        return "ensemble" if len(r["members"]) > 1 else ("snapshot" if "@" in r["candidate"] else "single")

    for ax, key, label in ((ax1, "valid_log_loss", "valid log loss"), (ax2, "valid_accuracy", "valid accuracy")):
        for r in rows:
            ax.scatter(r["cost_ratio"], r[key], marker=markers[r["views"]], color=kinds[kind(r)], s=28, alpha=0.8)
        ax.scatter(chosen["cost_ratio"], chosen[key], s=180, facecolors="none", edgecolors="red", linewidths=1.5)
        ax.set_xscale("log")
        ax.set_xlabel("cost per image (x one model, log scale)")
        ax.set_ylabel(label)
    handles = [plt.Line2D([], [], ls="", marker=m, color="0.3", label=v) for v, m in markers.items()]
    handles += [plt.Line2D([], [], ls="", marker="o", color=c, label=k) for k, c in kinds.items()]
    handles.append(plt.Line2D([], [], ls="", marker="o", mfc="none", mec="red", ms=10, label="chosen"))
    ax2.legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)
