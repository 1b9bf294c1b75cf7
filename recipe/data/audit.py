"""Audit: one pass over every file, then the dataset-level checks (Karpathy: "become one with
the data").

Contract: :func:`audit` reads ``data/raw`` (the ingest layout, see :mod:`recipe.data.sources`)
and returns ``(manifest, report)``. The manifest has one row per index entry with at least
``path, label, keep, issues, group``: ``keep`` says whether later stages use the file,
``issues`` names every problem found (``;``-separated), and ``group`` gives exact and near
duplicates one shared id, so the split can keep each group in one split. Images whose shorter
side is below ``min_side`` are named ``too_small`` and those whose area is far from the median
``size_outlier``; each policy (``drop`` or ``keep``) decides ``keep``. The report holds counts
per issue, class balance, sizes, modes and channel statistics. When ingest read several labels
per image (ingest.json's ``task: multi_label``), ``classes`` counts the images holding each label,
``labels_per_image`` how many images hold 0, 1, 2... labels, and a duplicate whose label list
differs is a ``conflicting_label`` as a differing label is.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from recipe.core.layout import RAW
from recipe.data.images import ImageInfo, inspect_image
from recipe.core.errors import DataError
from recipe.data.neardup import group_ids, hex_to_uint64, near_pairs
from recipe.data.sources import tags_of

# Issues that make a file unusable, whatever the policy.
UNREADABLE = {
    "zero_byte", "not_image", "truncated_or_corrupt", "decompression_bomb",
    "missing_file", "path_outside_root", "linked_directory", "bad_name",
}


def inspect_all(files: list[Path], *, max_pixels: int, stats_max_side: int, workers: int) -> list[ImageInfo]:
    """Inspect each file (in parallel when ``workers`` > 1); results in input order."""
    work = partial(_inspect_one, max_pixels=max_pixels, stats_max_side=stats_max_side)
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(files) < 64:
        return [work(f) for f in files]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(work, files, chunksize=32))


def _inspect_one(path: Path, **kw) -> ImageInfo:
    if not path.is_file():
        return ImageInfo(bytes=0, sha256="", issue="missing_file")
    return inspect_image(path, **kw)


def audit(
    *,
    raw: Path,
    drop_exact_duplicates: bool,
    conflicting_labels: str,
    near_dup_bits: int,
    max_pixels: int,
    min_side: int,
    too_small: str,
    size_outlier_factor: float,
    size_outliers: str,
    min_per_class: int,
    stats_max_side: int,
    workers: int,
) -> tuple[pd.DataFrame, dict]:
    raw = Path(raw)
    index = pd.read_csv(raw / RAW.index, dtype={"path": str, "label": str, "ingest_issue": str}, keep_default_na=False)
    ingested = json.loads((raw / RAW.summary).read_text())
    declared, multi = ingested.get("classes", []), ingested.get("task") == "multi_label"
    to_read = sorted({p for p, issue in zip(index["path"], index["ingest_issue"]) if not issue})
    infos = dict(zip(to_read, inspect_all(
        [raw / RAW.files / p for p in to_read], max_pixels=max_pixels, stats_max_side=stats_max_side, workers=workers
    )))
    blank = asdict(ImageInfo(bytes=0, sha256=""))
    info_rows = [asdict(infos[p]) if p in infos else blank for p in index["path"]]
    m = pd.concat([index.reset_index(drop=True), pd.DataFrame(info_rows)], axis=1)
    issues: list[list[str]] = [[i] if i else [] for i in m["ingest_issue"]]
    for k, issue in enumerate(m["issue"]):
        if issue:
            issues[k].append(issue)
    unreadable = np.array([any(i in UNREADABLE for i in row) for row in issues], dtype=bool)
    # An entry ingest did not copy (e.g. no_label) has no file and no hash: never read, never kept.
    readable = ~unreadable & (m["ingest_issue"] == "").to_numpy()
    keep = readable.copy()  # unreadable entries are never used; drop_unreadable=false stops instead

    readable_idx = np.flatnonzero(readable)
    _mark_exact_duplicates(m, readable_idx, issues, keep, drop=drop_exact_duplicates, conflicting=conflicting_labels)
    small, median_area = _mark_sizes(m, readable_idx, issues, keep, min_side=min_side,
                                     drop_small=too_small == "drop", factor=size_outlier_factor,
                                     drop_outliers=size_outliers == "drop")
    # A dropped too-small image has no usable pHash (a few pixels upscaled): it must not tie
    # unrelated kept images into one group.
    _mark_near_duplicates(m, readable_idx[~small[readable_idx]] if too_small == "drop" else readable_idx, issues,
                          radius=near_dup_bits)

    m["keep"] = keep
    m["issues"] = [";".join(dict.fromkeys(row)) for row in issues]
    m = m.drop(columns=["issue", "pixels", "channel_sum", "channel_sumsq"])
    report = _report(m, info_rows, declared, min_per_class, multi)
    report["unreadable"] = int(unreadable.sum())
    # px (width*height): readable images outside these bounds are named size_outlier
    report["size_outlier_area"] = {"below": round(median_area / size_outlier_factor, 1),
                                   "above": round(median_area * size_outlier_factor, 1)}
    first = ["path", "label", "keep", "issues", "group"]
    return m[first + [c for c in m.columns if c not in first]], report


def _mark_exact_duplicates(m, readable_idx, issues, keep, *, drop: bool, conflicting: str) -> None:
    """Byte-identical files: the first by path stays; conflicting labels can only be judged here."""
    m["dup_group"] = -1
    for gid, (_, rows) in enumerate(m.iloc[readable_idx].groupby("sha256", sort=True)):
        if len(rows) < 2:
            continue
        idx = rows.sort_values("path").index.to_numpy()
        m.loc[idx, "dup_group"] = gid
        conflict = rows["label"].nunique() > 1
        for n, k in enumerate(idx):
            if conflict:
                issues[k].append("conflicting_label")
                keep[k] &= conflicting == "keep"
            if n > 0:
                issues[k].append("exact_duplicate")
                keep[k] &= not drop


def _mark_sizes(m, readable_idx, issues, keep, *, min_side: int, drop_small: bool, factor: float,
                drop_outliers: bool) -> np.ndarray:
    """``too_small``: the shorter side is below ``min_side`` px. ``size_outlier``: width*height is
    more than ``factor`` times, or less than 1/``factor`` of, the median over the readable images.
    Returns the too-small mask over all rows and the median area."""
    w, h = m["width"].to_numpy(np.int64), m["height"].to_numpy(np.int64)
    small = np.zeros(len(m), bool)
    small[readable_idx] = np.minimum(w, h)[readable_idx] < min_side
    area = (w * h)[readable_idx].astype(np.float64)
    median = float(np.median(area)) if len(area) else 0.0
    outlier = np.zeros(len(m), bool)
    outlier[readable_idx] = (area > factor * median) | (area * factor < median)
    for k in np.flatnonzero(small):
        issues[k].append("too_small")
        keep[k] &= not drop_small
    for k in np.flatnonzero(outlier):
        issues[k].append("size_outlier")
        keep[k] &= not drop_outliers
    return small, median


def _mark_near_duplicates(m, readable_idx, issues, *, radius: int) -> None:
    """``group``: connected components of pHash distance <= radius (exact copies at 0), for the
    split; ``near_group`` and the issues only where a component holds more than one content."""
    m["near_group"] = -1
    m["group"] = -1
    pairs = near_pairs(hex_to_uint64(m["phash"].iloc[readable_idx]), radius)
    comp = group_ids(len(readable_idx), pairs)
    m.loc[readable_idx, "group"] = comp
    exact = m.iloc[readable_idx]["sha256"].to_numpy()
    in_pair = np.zeros(len(readable_idx), bool)
    in_pair[np.unique(pairs)] = True
    order = np.argsort(comp, kind="stable")  # one pass over the components, not one scan each
    for positions in np.split(order, np.flatnonzero(np.diff(comp[order])) + 1):
        if len(positions) < 2 or len(set(exact[positions])) < 2:
            continue  # a singleton, or only byte-identical copies (reported as exact duplicates)
        members = readable_idx[positions]
        m.loc[members, "near_group"] = comp[positions[0]]
        labels_differ = m.loc[members, "label"].nunique() > 1
        for k in members[in_pair[positions]]:
            issues[k].append("near_duplicate")
            if labels_differ:
                issues[k].append("near_duplicate_label_differs")


def _report(m: pd.DataFrame, info_rows: list[dict], declared: list[str], min_per_class: int, multi: bool = False) -> dict:
    kept = m[m["keep"]]
    if multi:  # several labels per image: "classes" counts the images that hold each label
        counts = Counter(t for label in kept["label"] for t in tags_of(label))
        all_labels = sorted(set(declared) | {t for label in m["label"] for t in tags_of(label)})
    else:
        counts = Counter(kept["label"])
        all_labels = sorted(set(declared) | set(m["label"]) - {""})
    per_class = {label: counts.get(label, 0) for label in all_labels}
    nonzero = [c for c in per_class.values() if c > 0]
    issue_counts = Counter(i for row in m["issues"] for i in row.split(";") if i)
    keep_mask = m["keep"].to_numpy()
    px = np.array([r["pixels"] for r in info_rows], dtype=np.float64)[keep_mask]
    sums = np.array([r["channel_sum"] for r in info_rows], dtype=np.float64)[keep_mask]
    sumsq = np.array([r["channel_sumsq"] for r in info_rows], dtype=np.float64)[keep_mask]
    total = px.sum()
    mean = sums.sum(0) / total if total else np.zeros(3)
    std = np.sqrt(np.maximum(sumsq.sum(0) / total - mean**2, 0)) if total else np.zeros(3)
    w, h = kept["width"].to_numpy(float), kept["height"].to_numpy(float)
    aspect = w / np.where(h > 0, h, 1)
    per_image = {}
    if multi:  # how many labels each kept image holds, and how many hold none
        per_image = {"task": "multi_label", "labels_per_image": {str(k): v for k, v in sorted(
            Counter(len(tags_of(label)) for label in kept["label"]).items())},
            "images_without_labels": int((kept["label"] == "").sum())}
    return {
        **per_image,
        "entries": int(len(m)),
        "kept": int(keep_mask.sum()),
        "dropped": int((~keep_mask).sum()),
        "issues": dict(sorted(issue_counts.items())),
        "classes": per_class,
        "num_classes": len(nonzero),
        "imbalance_ratio": round(max(nonzero) / min(nonzero), 4) if nonzero else None,
        "empty_classes": [k for k, v in per_class.items() if v == 0],
        "single_image_classes": [k for k, v in per_class.items() if v == 1],
        "small_classes": [k for k, v in per_class.items() if 0 < v < min_per_class],
        "exact_duplicate_groups": int(m.loc[m["dup_group"] >= 0, "dup_group"].nunique()),
        "near_duplicate_groups": int(m.loc[m["near_group"] >= 0, "near_group"].nunique()),
        "modes": dict(Counter(kept["mode"])),
        "formats": dict(Counter(kept["format"])),
        "exif_rotated": int((kept["exif_orientation"] > 1).sum()),
        "size": _quantiles(w, h, aspect),
        "channel_mean": [round(float(v), 5) for v in mean],
        "channel_std": [round(float(v), 5) for v in std],
    }


def _quantiles(w: np.ndarray, h: np.ndarray, aspect: np.ndarray) -> dict:
    if not len(w):
        return {}
    q = lambda a: {k: round(float(v), 3) for k, v in zip(("min", "median", "max"), np.quantile(a, [0, 0.5, 1]))}
    return {"width": q(w), "height": q(h), "aspect": q(aspect), "distinct_sizes": int(len(set(zip(w, h))))}


def check_usable(report: dict, *, min_images: int, drop_unreadable: bool) -> None:
    """Stop (after the outputs are written) when the policy or the data rule the run out."""
    if report["unreadable"] and not drop_unreadable:
        raise DataError(f"audit: {report['unreadable']} unreadable entries (see outputs/audit/manifest.csv); set audit.drop_unreadable=true to drop them")
    if report.get("task") == "multi_label":  # each label is a yes/no question: one label is a classifier
        if report["num_classes"] < 1:
            raise DataError("audit: no usable image holds a label; a multi-label classifier needs at least 1 (see outputs/audit/manifest.csv)")
    elif report["num_classes"] < 2:
        raise DataError(f"audit: {report['num_classes']} class(es) with usable images; a classifier needs at least 2 (see outputs/audit/manifest.csv)")
    if report["kept"] < min_images:
        raise DataError(f"audit: {report['kept']} usable images, fewer than audit.min_images={min_images} (see outputs/audit/manifest.csv)")


def metrics_of(report: dict) -> dict[str, float]:
    """The report's numbers as flat MLflow metrics."""
    out = {k: float(report[k]) for k in ("entries", "kept", "dropped", "num_classes", "exact_duplicate_groups", "near_duplicate_groups", "exif_rotated")}
    if report["imbalance_ratio"] is not None:
        out["imbalance_ratio"] = float(report["imbalance_ratio"])
    out.update({f"issues.{k}": float(v) for k, v in report["issues"].items()})
    out.update({f"class_count.{k}": float(v) for k, v in report["classes"].items()})
    out.update({f"channel_mean.{i}": v for i, v in enumerate(report["channel_mean"])})
    out.update({f"channel_std.{i}": v for i, v in enumerate(report["channel_std"])})
    return out
