"""Cross-validation's folds over train + valid, and the split each fold's stages train on.

Contract:

- **Folds** (:func:`assign_folds`): the split's train and valid rows (never test) in ``k`` folds,
  as :mod:`recipe.data.split` places splits: whole duplicate groups, stratified on the label (and the
  split's extra column), largest groups first into the fold furthest below its share, in a seeded
  order among equals. Several labels per image (a ``labels`` column): the groups placed by
  iterative stratification (:func:`recipe.data.split.iterative_stratification`), each fold an
  equal share of every label.
- **A fold's split** (:func:`fold_split`): fold ``i`` is held out (written as the ``test`` split,
  which no training stage reads); the other folds are split again into ``train`` and ``valid``
  in the proportion of the main split (0.6 : 0.15 by default), so a fold runs the recipe's
  stages unchanged, on less data, with its own valid split for its early stopping, its range
  tests and its best epoch. A fold model never sees its held-out fold, not even to choose.

pandas and numpy only: the cv_split stage that calls these loads no torch (tests/test_deps.py).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from recipe.core.errors import DataError
from recipe.data.sources import tags_of
from recipe.data.split import LABELS, _groups, _strata, iterative_stratification
from recipe.data.split import split as split_rows

FOLD_COLUMNS = ("path", "label", "group", "fold")


def assign_folds(table: pd.DataFrame, k: int, *, seed: int, stratify_column: str | None = None) -> pd.DataFrame:
    """``path, label, group, fold`` for every train and valid row of ``table`` (a split.csv; with
    several labels per image ``labels`` in place of ``label``)."""
    rows = table[table["split"].isin(["train", "valid"])].reset_index(drop=True)
    if k < 2:
        raise DataError(f"cv.folds = {k}: cross-validation needs at least 2 folds")
    if LABELS in rows.columns:
        return _multi_label_folds(rows, k, seed)
    column = stratify_column if stratify_column and stratify_column in rows.columns else None
    groups = _groups(rows, column)
    per_label = groups.groupby("label").size()
    short = per_label[per_label < k]
    if len(short):
        label = short.index[0]
        raise DataError(f"cv.folds = {k}: class {label!r} has {short.iloc[0]} duplicate group(s) in train + valid; "
                        f"every fold needs one: lower cv.folds or add images")
    rng = np.random.default_rng(seed)
    assigned: dict[int, int] = {}
    strata = _strata(groups, k)
    for key in sorted(strata, key=str):
        members = groups.loc[strata[key]]
        order = members.iloc[rng.permutation(len(members))].sort_values("size", ascending=False, kind="stable")
        filled = np.zeros(k)
        for gid, size in zip(order.index, order["size"]):
            best = int(np.argmin(filled))  # the fold furthest below its (equal) share; ties: the lowest
            assigned[gid] = best
            filled[best] += size
    out = rows[["path", "label", "group"]].copy()
    out["fold"] = rows["group"].map(assigned).astype(int)
    return out


def _multi_label_folds(rows: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    """Several labels per image: the duplicate groups in ``k`` folds by iterative stratification
    (each fold wants an equal share of every label's images and of all images). A label with fewer
    groups than folds cannot reach every fold; the fold models are trained and scored all the same."""
    tags = [tags_of(v) for v in rows[LABELS]]
    names = sorted({t for ts in tags for t in ts})
    if len(rows) < k:
        raise DataError(f"cv.folds = {k}: train + valid hold {len(rows)} image(s); every fold needs one")
    hot = pd.DataFrame([[t in ts for t in names] for ts in tags], columns=names, dtype=int)
    hot["group"] = rows["group"].to_numpy()
    per_group = hot.groupby("group")
    counts, sizes = per_group[names].sum(), per_group.size()
    place = iterative_stratification(counts.to_numpy(), sizes.to_numpy(), np.full(k, 1 / k),
                                     np.random.default_rng(seed))
    out = rows[["path", LABELS, "group"]].copy()
    out["fold"] = rows["group"].map(dict(zip(counts.index, place))).astype(int)
    return out


def fold_split(table: pd.DataFrame, folds: pd.DataFrame, fold: int, *, fractions: dict[str, float], seed: int,
               stratify_column: str | None = None) -> pd.DataFrame:
    """The split.csv fold ``fold`` trains on: its held-out fold as ``test``, the rest in ``train``
    and ``valid`` (the main split's proportion, recipe.data.split's placement). The main test split's
    rows are not in it."""
    of = dict(zip(folds["path"], folds["fold"]))
    rows = table[table["path"].isin(of)].copy()
    held = rows["path"].map(of) == fold
    rest = rows[~held]
    share = fractions["valid"] / (fractions["train"] + fractions["valid"])
    multi = LABELS in rows.columns  # several labels per image: the split's own iterative stratification
    manifest = (rest.rename(columns={LABELS: "label"}) if multi else rest).assign(keep=True)
    inner, _ = split_rows(manifest=manifest, fractions={"train": 1 - share, "valid": share, "test": 0.0},
                          stratify=True, seed=seed + fold, stratify_column=None if multi else stratify_column,
                          keep_groups=True, task="multi_label" if multi else "single_label")
    placed = dict(zip(inner["path"], inner["split"]))
    rows["split"] = np.where(held, "test", rows["path"].map(placed))
    return rows.sort_values(["split", "path"]).reset_index(drop=True)
