"""Seeded, stratified, group-aware train / valid / test split.

Contract: :func:`split` takes the audit manifest and assigns every kept row to one split.
Rows sharing a ``group`` (exact or near duplicates) always land in the same split, so no
duplicate leaks from train into valid or test. Within each stratum (label, plus an optional
extra column such as ELPV's module type) groups are placed largest first, in a seeded random
order among equals, into the split furthest below its target share of images. Every class gets
at least one group in each split whose fraction is above zero; a class with fewer groups than
that stops with a message naming it. With ``task="multi_label"`` (several labels per image) the split is by iterative stratification
(:func:`iterative_stratification`) and writes ``labels`` in place of ``label``.
``keep_groups=False`` splits per image instead (each row
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
from recipe.data.sources import tags_of

SPLITS = ("train", "valid", "test")


def split(
    *, manifest: pd.DataFrame, fractions: dict[str, float], stratify: bool, seed: int, stratify_column: str | None = None,
    soft_labels: dict | None = None, keep_groups: bool = True, task: str = "single_label",
) -> tuple[pd.DataFrame, dict]:
    rows = manifest[manifest["keep"].astype(bool)].copy()
    audit_groups = rows["group"].copy()
    if not keep_groups:
        rows["group"] = np.arange(len(rows))
    if task == "multi_label":
        table, summary = _split_multi_label(rows, fractions=fractions, stratify=stratify, seed=seed,
                                            ignored={"stratify_column": stratify_column, "soft_labels": soft_labels})
        return table, {**summary, "keep_groups": keep_groups, **_straddling(rows, audit_groups, keep_groups, table)}
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
    summary = {**_summary(table, fractions), **soft_summary, "keep_groups": keep_groups,
               **_straddling(rows, audit_groups, keep_groups, table)}
    return table, summary


def _straddling(rows: pd.DataFrame, audit_groups: pd.Series, keep_groups: bool, table: pd.DataFrame) -> dict:
    """Split per image: how many of the audit's duplicate groups straddle splits."""
    if keep_groups:
        return {}
    where = dict(zip(table["path"], table["split"]))
    per = pd.DataFrame({"group": audit_groups.to_numpy(), "split": rows["path"].map(where).to_numpy()})
    return {"straddling_groups": int((per.groupby("group")["split"].nunique() > 1).sum())}


LABELS = "labels"  # split.csv's column of label lists (data.task: multi_label), in place of ``label``


def iterative_stratification(counts: np.ndarray, sizes: np.ndarray, fractions: np.ndarray,
                             rng: np.random.Generator) -> np.ndarray:
    """The split (an index into ``fractions``) of each unit, by iterative stratification (Sechidis,
    Tsoumakas and Vlahavas 2011) over units of several images: ``counts[u, l]`` images of unit
    ``u`` hold label ``l``, ``sizes[u]`` images in all.

    Each split wants its fraction of every label's images and of all images. The label with the
    fewest units left is placed first: each of its units (the largest first, in a seeded order
    among equals) goes to the split that wants that label most (ties: the one that wants the most
    images; then the first), and every split's wants shrink by what the unit holds. Units with no
    label fill the splits' remaining wants last, the largest first."""
    k, units = len(fractions), len(sizes)
    want = np.outer(fractions, counts.sum(0)).astype(float)  # (splits, labels)
    want_all = fractions * sizes.sum()
    out = np.full(units, -1)
    order = rng.permutation(units)
    order = order[np.argsort(-sizes[order], kind="stable")]  # largest first, seeded among equals
    left = np.ones(units, bool)
    holds = counts > 0
    while True:
        per_label = holds[left].sum(0)
        if not per_label.any():
            break
        label = int(np.argmin(np.where(per_label > 0, per_label, np.iinfo(np.int64).max)))
        for u in order[left[order] & holds[order, label]]:
            best = max(range(k), key=lambda s: (want[s, label], want_all[s], -s))
            out[u], left[u] = best, False
            want[best] -= counts[u]
            want_all[best] -= sizes[u]
    for u in order[left[order]]:
        best = max(range(k), key=lambda s: (want_all[s], -s))
        out[u] = best
        want_all[best] -= sizes[u]
    return out


def _split_multi_label(rows: pd.DataFrame, *, fractions: dict[str, float], stratify: bool, seed: int,
                       ignored: dict) -> tuple[pd.DataFrame, dict]:
    """Several labels per image: duplicate groups placed by :func:`iterative_stratification`
    (``stratify: false``: by size alone), then any label with at least as many groups as there are
    splits moved into a split that has none of it (its smallest group, from the split with the most
    of them). The table has ``labels`` (the label list) where a single-label split has ``label``."""
    active = [s for s in SPLITS if fractions[s] > 0]
    tags = [tags_of(t) for t in rows["label"]]
    names = sorted({t for ts in tags for t in ts})
    hot = pd.DataFrame([[t in ts for t in names] for ts in tags], columns=names, index=rows.index, dtype=int)
    hot["group"] = rows["group"].to_numpy()
    per_group = hot.groupby("group")
    counts, sizes = per_group[names].sum(), per_group.size()
    rng = np.random.default_rng(seed)
    share = np.array([fractions[s] for s in active])
    place = iterative_stratification(counts.to_numpy() if stratify else np.zeros((len(sizes), 0), int),
                                     sizes.to_numpy(), share, rng)
    assigned = {g: active[i] for g, i in zip(counts.index, place)}
    for label in names:  # every label in every split, where it has a group for each
        holding = [g for g in counts.index if counts.loc[g, label] > 0]
        if len(holding) < len(active):
            continue
        for s in active:
            if any(assigned[g] == s for g in holding):
                continue
            per_split = Counter(assigned[g] for g in holding)
            donor = max(per_split, key=lambda d: (per_split[d], d))
            smallest = min((g for g in holding if assigned[g] == donor), key=lambda g: (sizes[g], g))
            assigned[smallest] = s
    rows = rows.assign(split=rows["group"].map(assigned)).rename(columns={"label": LABELS})
    out_cols = ["path", LABELS, "split", "group"] + [c for c in ("width", "height") if c in rows.columns]
    table = rows[out_cols].sort_values(["split", "path"]).reset_index(drop=True)
    n = len(table)
    hot_table = pd.DataFrame([[t in tags_of(v) for t in names] for v in table[LABELS]],
                             columns=names, dtype=int)
    counts_out = {s: {t: int(hot_table.loc[(table["split"] == s).to_numpy(), t].sum()) for t in names} for s in SPLITS}
    totals = hot_table.sum()
    summary = {
        "task": "multi_label",
        "images": n,
        "leaking_groups": leaking_groups(table),
        "fractions_target": dict(fractions),
        "fractions_actual": {s: round(float((table["split"] == s).sum()) / n, 4) if n else 0.0 for s in SPLITS},
        "counts": counts_out,  # images holding each label, per split
        "label_share": {t: {s: round(counts_out[s][t] / totals[t], 4) if totals[t] else 0.0 for s in SPLITS}
                        for t in names},
        "images_without_labels": {s: int(((table["split"] == s) & (table[LABELS] == "")).sum()) for s in SPLITS},
        "labels_not_in_every_split": [t for t in names if any(counts_out[s][t] == 0 for s in active)],
    }
    notes = {k: f"ignored: {k} applies to one label per image" for k, v in ignored.items() if v}
    return table, {**summary, **({"ignored": notes} if notes else {})}


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
    """split.csv: ``path``, ``split`` and ``label`` (one label per image) or ``labels`` (the label
    lists of data.task multi_label, joined by a space)."""
    table = pd.read_csv(path, keep_default_na=False, dtype={"path": str, "label": str, LABELS: str, "split": str})
    missing = {"path", LABELS if LABELS in table.columns else "label", "split"} - set(table.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {sorted(missing)}")
    return table


def class_names(table: pd.DataFrame) -> list[str]:
    """The classes of a split table; of one with label lists (``labels``), the labels."""
    if LABELS in table.columns:
        return sorted({t for v in table[LABELS] for t in tags_of(v)})
    return sorted(table["label"].unique())

