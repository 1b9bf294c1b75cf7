"""Split: stratified, seeded, and no duplicate group ever straddles two splits."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recipe.core.errors import DataError
from recipe.data.split import leaking_groups, split

FRACTIONS = {"train": 0.6, "valid": 0.15, "test": 0.25}


def manifest(counts: dict[str, int], group_every: int = 0, seed: int = 0, extra: bool = False) -> pd.DataFrame:
    """Rows per label; with ``group_every`` k, runs of k consecutive rows share a group."""
    rows, gid = [], 0
    rng = np.random.default_rng(seed)
    for label, n in counts.items():
        for i in range(n):
            if not group_every or i % group_every == 0:
                gid += 1
            rows.append({"path": f"{label}/{i}.png", "label": label, "keep": True, "group": gid,
                         "module_type": rng.choice(["mono", "poly"]) if extra else ""})
    return pd.DataFrame(rows)


def test_every_kept_row_gets_one_split_and_dropped_rows_none():
    m = manifest({"a": 40, "b": 20})
    m.loc[0, "keep"] = False
    table, summary = split(manifest=m, fractions=FRACTIONS, stratify=True, seed=0)
    assert len(table) == 59 and set(table["split"]) == {"train", "valid", "test"}
    assert m.loc[0, "path"] not in set(table["path"])
    assert summary["images"] == 59


def test_stratification_keeps_class_shares_in_each_split():
    table, summary = split(manifest=manifest({"a": 800, "b": 200}), fractions=FRACTIONS, stratify=True, seed=1)
    for s, frac in FRACTIONS.items():
        part = table[table["split"] == s]
        assert abs(len(part) / 1000 - frac) <= 0.002
        assert abs((part["label"] == "b").mean() - 0.2) <= 0.01
    assert summary["counts"]["test"] == {"a": 200, "b": 50}


def test_duplicate_groups_never_straddle_splits():
    m = manifest({"a": 300, "b": 120}, group_every=5)
    table, summary = split(manifest=m, fractions=FRACTIONS, stratify=True, seed=3)
    assert table.groupby("group")["split"].nunique().max() == 1
    assert summary["leaking_groups"] == 0
    shares = table["split"].value_counts(normalize=True)
    assert abs(shares["test"] - 0.25) < 0.03


def test_leak_counter_counts_straddling_groups():
    t = pd.DataFrame({"group": [1, 1, 2, 3, 3], "split": ["train", "test", "train", "valid", "valid"]})
    assert leaking_groups(t) == 1


def test_same_seed_same_split_other_seed_differs():
    m = manifest({"a": 100, "b": 60})
    one = split(manifest=m, fractions=FRACTIONS, stratify=True, seed=5)[0]
    two = split(manifest=m, fractions=FRACTIONS, stratify=True, seed=5)[0]
    other = split(manifest=m, fractions=FRACTIONS, stratify=True, seed=6)[0]
    pd.testing.assert_frame_equal(one, two)
    assert not one.sort_values("path")["split"].reset_index(drop=True).equals(other.sort_values("path")["split"].reset_index(drop=True))


def test_extra_column_is_stratified_too():
    m = manifest({"a": 600, "b": 400}, extra=True, seed=2)
    table, _ = split(manifest=m, fractions=FRACTIONS, stratify=True, seed=0, stratify_column="module_type")
    overall = (table["module_type"] == "poly").mean()
    for s in FRACTIONS:
        part = table[table["split"] == s]
        assert abs((part["module_type"] == "poly").mean() - overall) < 0.02
        for label in "ab":
            sub = part[part["label"] == label]
            whole = table[table["label"] == label]
            assert abs((sub["module_type"] == "poly").mean() - (whole["module_type"] == "poly").mean()) < 0.03


def test_small_class_still_reaches_every_split():
    table, _ = split(manifest=manifest({"a": 50, "b": 3}), fractions=FRACTIONS, stratify=True, seed=0)
    assert set(table[table["label"] == "b"]["split"]) == {"train", "valid", "test"}


def test_class_too_small_to_stratify_is_a_clear_error():
    with pytest.raises(DataError, match=r"class 'b' has 2 usable image\(s\) in 2 duplicate group\(s\); "
                                        r"a stratified train/valid/test split needs at least 3"):
        split(manifest=manifest({"a": 50, "b": 2}), fractions=FRACTIONS, stratify=True, seed=0)


def test_zero_valid_fraction_needs_only_two_per_class():
    table, _ = split(manifest=manifest({"a": 50, "b": 2}), fractions={"train": 0.75, "valid": 0.0, "test": 0.25}, stratify=True, seed=0)
    assert set(table["split"]) == {"train", "test"}


def test_unknown_stratify_column_is_named():
    with pytest.raises(DataError, match="stratify column 'colour'"):
        split(manifest=manifest({"a": 10, "b": 10}), fractions=FRACTIONS, stratify=True, seed=0, stratify_column="colour")


# --- soft labels ------------------------------------------------------------------------------

SOFT = {"column": "p", "positive": "bad"}


def soft_manifest(n: int = 40) -> pd.DataFrame:
    m = manifest({"bad": n // 2, "good": n // 2})
    levels = np.array([2 / 3, 1.0])  # "bad" rows are rated 2/3 or 1, "good" rows 0 or 1/3
    m["p"] = np.where(m["label"] == "bad", levels[np.arange(len(m)) % 2], levels[np.arange(len(m)) % 2] - 2 / 3)
    return m


def test_soft_labels_travel_with_their_rows():
    m = soft_manifest()
    table, summary = split(manifest=m, fractions=FRACTIONS, stratify=True, seed=0, soft_labels=SOFT)
    assert "target_bad" in table.columns
    expected = m.set_index("path")["p"]
    assert np.allclose(table["target_bad"], expected[table["path"]].to_numpy())
    assert summary["soft_labels"] == {"column": "p", "positive": "bad", "uncertain": 20, "disagree_with_label": 0}


def test_soft_labels_count_rows_whose_probability_contradicts_the_label():
    m = soft_manifest()
    m.loc[0, "p"] = 0.1  # labelled "bad", rated 10% bad
    _, summary = split(manifest=m, fractions=FRACTIONS, stratify=True, seed=0, soft_labels=SOFT)
    assert summary["soft_labels"]["disagree_with_label"] == 1


def test_soft_labels_are_skipped_with_a_record_when_there_are_not_two_classes():
    m = manifest({"a": 20, "b": 20, "c": 20})
    m["p"] = 0.5
    table, summary = split(manifest=m, fractions=FRACTIONS, stratify=True, seed=0, soft_labels={"column": "p", "positive": "a"})
    assert not [c for c in table.columns if c.startswith("target_")]
    assert summary["soft_labels"] == "ignored: soft labels need two classes, this task has 3"


@pytest.mark.parametrize("change, message", [
    ({"column": "q"}, "data.soft_labels.column = 'q': not in the manifest"),
    ({"positive": "ugly"}, "data.soft_labels.positive = 'ugly': not one of the classes ['bad', 'good']"),
])
def test_soft_label_settings_that_name_nothing_are_one_line_errors(change, message):
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        split(manifest=soft_manifest(), fractions=FRACTIONS, stratify=True, seed=0, soft_labels={**SOFT, **change})


@pytest.mark.parametrize("value", [1.5, -0.1, ""])
def test_soft_labels_must_be_probabilities(value):
    m = soft_manifest().astype({"p": object})
    m.loc[3, "p"] = value
    with pytest.raises(DataError, match=r"1 value\(s\) are not probabilities in \[0, 1\] \(first: bad/3.png\)"):
        split(manifest=m, fractions=FRACTIONS, stratify=True, seed=0, soft_labels=SOFT)
