"""Seeded, stratified, group-aware train / valid / test split.

Contract: :func:`split` takes the audit manifest and assigns every kept row to one split.
Rows sharing a ``group`` (exact or near duplicates) always land in the same split, so no
duplicate leaks from train into valid or test. Within each stratum (label, plus an optional
extra column such as ELPV's module type) groups are placed largest first, in a seeded random
order among equals, into the split furthest below its target share of images. Every class gets
at least one group in each split whose fraction is above zero; a class with fewer groups than
that stops with a message naming it. ``keep_groups=False`` splits per image instead (each row
its own group: near duplicates may straddle splits, as in the published ELPV protocol); the
summary then counts the audit's groups that straddle (``straddling_groups``).

The table carries the images' ``width`` and ``height`` when the manifest has them (the
``size: auto`` rule of recipe/data/sizes.py reads them).

With ``soft_labels`` (two classes only) the table also carries ``target_<positive>``: the
annotated probability of the positive class, which the training stages use as the target
distribution instead of the hard label (see :func:`recipe.data.loader.load_split`).
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from recipe.core.errors import DataError

SPLITS = ("train", "valid", "test")


def split(
    *, manifest: pd.DataFrame, fractions: dict[str, float], stratify: bool, seed: int, stratify_column: str | None = None,
    soft_labels: dict | None = None, keep_groups: bool = True,
) -> tuple[pd.DataFrame, dict]:
    rows = manifest[manifest["keep"].astype(bool)].copy()
    audit_groups = rows["group"].copy()
    if not keep_groups:
        rows["group"] = np.arange(len(rows))
    target, soft_summary = _soft_targets(rows, soft_labels)
    if stratify_column and stratify_column not in rows.columns:
        raise DataError(f"split: stratify column {stratify_column!r} is not in the manifest (columns: {', '.join(rows.columns)})")
    active = [s for s in SPLITS if fractions[s] > 0]
    groups = _groups(rows, stratify_column if stratify else None)
    _check_sizes(groups, len(active), active)
    rng = np.random.default_rng(seed)
    assigned: dict[int, str] = {}
    strata = _strata(groups, len(active)) if stratify else {"all": list(groups.index)}
    for key in sorted(strata, key=str):
        members = groups.loc[strata[key]]
        order = members.iloc[rng.permutation(len(members))].sort_values("size", ascending=False, kind="stable")
        total = order["size"].sum()
        filled = dict.fromkeys(active, 0.0)
        for gid, size in zip(order.index, order["size"]):
            need = {s: fractions[s] * total - filled[s] for s in active}
            best = max(active, key=lambda s: (need[s], fractions[s]))
            assigned[gid] = best
            filled[best] += size
    if stratify:
        _every_class_everywhere(groups, assigned, active)
    rows["split"] = rows["group"].map(assigned)
    out_cols = ["path", "label", "split", "group"] + ([stratify_column] if stratify_column else [])
    out_cols += [c for c in ("width", "height") if c in rows.columns]
    if target is not None:
        name = f"{TARGET_PREFIX}{soft_labels['positive']}"
        rows[name] = target
        out_cols.append(name)
    table = rows[out_cols].sort_values(["split", "path"]).reset_index(drop=True)
    summary = {**_summary(table, fractions), **soft_summary, "keep_groups": keep_groups}
    if not keep_groups:
        per = pd.DataFrame({"group": audit_groups.to_numpy(), "split": rows["split"].to_numpy()})
        summary["straddling_groups"] = int((per.groupby("group")["split"].nunique() > 1).sum())
    return table, summary


TARGET_PREFIX = "target_"


def _soft_targets(rows: pd.DataFrame, soft: dict | None) -> tuple[pd.Series | None, dict]:
    """The positive class's probability per row, and what the split's summary records about it."""
    if soft is None:
        return None, {}
    column, positive = soft["column"], soft["positive"]
    classes = sorted(rows["label"].unique())
    if len(classes) != 2:  # e.g. ELPV's four_class task with the default elpv config
        return None, {"soft_labels": f"ignored: soft labels need two classes, this task has {len(classes)}"}
    if column not in rows.columns:
        raise DataError(f"data.soft_labels.column = {column!r}: not in the manifest (columns: {', '.join(rows.columns)})")
    if positive not in classes:
        raise DataError(f"data.soft_labels.positive = {positive!r}: not one of the classes {classes}")
    p = pd.to_numeric(rows[column], errors="coerce")
    bad = rows.loc[~p.between(0, 1), "path"]  # NaN (empty, text) is not between
    if len(bad):
        raise DataError(f"data.soft_labels.column = {column!r}: {len(bad)} value(s) are not probabilities in [0, 1] "
                        f"(first: {bad.iloc[0]})")
    disagree = int(((p >= 0.5) != (rows["label"] == positive)).sum())
    return p.astype(float), {"soft_labels": {"column": column, "positive": positive, "uncertain": int(((p > 0) & (p < 1)).sum()),
                                             "disagree_with_label": disagree}}


def leaking_groups(table: pd.DataFrame) -> int:
    """How many duplicate groups have rows in more than one split (must be 0)."""
    return int((table.groupby("group")["split"].nunique() > 1).sum())


def _groups(rows: pd.DataFrame, column: str | None) -> pd.DataFrame:
    def majority(values: pd.Series) -> str:
        counts = Counter(map(str, values))
        return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]

    named = {"label": ("label", majority), "size": ("path", "size")}
    if column:
        named["extra"] = (column, majority)
    return rows.groupby("group").agg(**named)


def _check_sizes(groups: pd.DataFrame, need: int, active: list[str]) -> None:
    per_label = groups.groupby("label").agg(groups=("size", "size"), images=("size", "sum"))
    for label, r in per_label.iterrows():
        if r["groups"] < need:
            raise DataError(
                f"split: class {label!r} has {r['images']} usable image(s) in {r['groups']} duplicate group(s); "
                f"a stratified {'/'.join(active)} split needs at least {need}: add images, drop the class, or set a split fraction to 0"
            )


def _strata(groups: pd.DataFrame, need: int) -> dict[object, list[int]]:
    """Label x extra-column strata; one too small to reach every split folds into its label's largest."""
    if "extra" not in groups.columns:
        return {label: list(idx) for label, idx in groups.groupby("label").groups.items()}
    strata: dict[object, list[int]] = {}
    for label, of_label in groups.groupby("label"):
        parts = {k: list(v) for k, v in of_label.groupby("extra").groups.items()}
        big = [k for k in parts if len(parts[k]) >= need] or [max(parts, key=lambda k: len(parts[k]))]
        largest = max(big, key=lambda k: len(parts[k]))
        for k, idx in parts.items():
            strata.setdefault((label, k if k in big else largest), []).extend(idx)
    return strata


def _every_class_everywhere(groups: pd.DataFrame, assigned: dict[int, str], active: list[str]) -> None:
    """Move the smallest group of a class into any active split that got none of it."""
    for label, of_label in groups.groupby("label"):
        for s in active:
            mine = [g for g in of_label.index if assigned[g] == s]
            if mine:
                continue
            per_split = Counter(assigned[g] for g in of_label.index)
            donor = max(per_split, key=per_split.get)
            smallest = min((g for g in of_label.index if assigned[g] == donor), key=lambda g: (of_label.loc[g, "size"], g))
            assigned[smallest] = s


def _summary(table: pd.DataFrame, fractions: dict[str, float]) -> dict:
    counts = table.groupby(["split", "label"]).size()
    n = len(table)
    return {
        "images": n,
        "leaking_groups": leaking_groups(table),
        "fractions_target": dict(fractions),
        "fractions_actual": {s: round(float((table["split"] == s).sum()) / n, 4) if n else 0.0 for s in SPLITS},
        "counts": {s: {str(k): int(v) for k, v in counts[s].items()} if s in counts.index.get_level_values(0) else {} for s in SPLITS},
    }


def read_split(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path, keep_default_na=False, dtype={"path": str, "label": str, "split": str})
    missing = {"path", "label", "split"} - set(table.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {sorted(missing)}")
    return table


def class_names(table: pd.DataFrame) -> list[str]:
    return sorted(table["label"].unique())
