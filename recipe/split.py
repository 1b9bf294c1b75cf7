"""Seeded, stratified, group-aware train / valid / test split.

Contract: :func:`split` takes the audit manifest and assigns every kept row to one split.
Rows sharing a ``group`` (exact or near duplicates) always land in the same split, so no
duplicate leaks from train into valid or test. Within each stratum (label, plus an optional
extra column such as ELPV's module type) groups are placed largest first, in a seeded random
order among equals, into the split furthest below its target share of images. Every class gets
at least one group in each split whose fraction is above zero; a class with fewer groups than
that stops with a message naming it.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from recipe.errors import DataError

SPLITS = ("train", "valid", "test")


def split(
    *, manifest: pd.DataFrame, fractions: dict[str, float], stratify: bool, seed: int, stratify_column: str | None = None
) -> tuple[pd.DataFrame, dict]:
    rows = manifest[manifest["keep"].astype(bool)].copy()
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
    table = rows[out_cols].sort_values(["split", "path"]).reset_index(drop=True)
    return table, _summary(table, fractions)


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
