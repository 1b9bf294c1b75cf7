"""Runs into groups (one setting each), each group's figures with their spread, and every group
against the reference, seed by seed on the same test images.

A group is the runs whose params are equal once the keys in ``not_settings`` (the seed, where
MLflow writes, ...) are left out, and whose code and data (the md5s in their ``dvc.lock``) are the
same: runs of another commit's code or of other data are never pooled with them, and their group's
name says so. Two runs of one group with the same seed are one result computed twice: the first
is kept, the other listed as left out.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recipe.compare.runs import Run
from recipe.compare.stats import PREDICTED, Images, class_list, interval, paired, paired_mean, per_image

TEST_FIGURES = tuple(PREDICTED)  # one run: an interval from its test images
OTHER_FIGURES = ("test_log_loss", "test_log_loss_chosen", "valid_accuracy", "valid_accuracy_chosen",
                 "valid_balanced_accuracy_chosen", "valid_log_loss", "valid_log_loss_chosen", "minutes",
                 "cv_accuracy", "cv_balanced_accuracy")  # no per-image record: an interval with two runs or more only
SEED_KEYS = ("seed", "split.seed")  # a run's seeds: the same setting with other seeds is another sample
PAIRED_FIGURES = ("test_accuracy", "test_accuracy_chosen")


@dataclass
class Group:
    name: str
    settings: dict[str, Any]
    code: str
    data: str
    runs: list[Run] = field(default_factory=list)
    summary: dict[str, dict[str, float]] = field(default_factory=dict)  # figure -> n, mean, std, low, high


@dataclass
class Comparison:
    a: str  # the reference group
    b: str
    per_seed: list[dict[str, Any]] = field(default_factory=list)
    mean: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # figure -> (diff, low, high)
    notes: list[str] = field(default_factory=list)


def ignored(key: str, not_settings: list[str]) -> bool:
    return any(key == n or key.startswith(n + ".") for n in not_settings)


def seeds_of(run: Run) -> tuple:
    """The run's seeds (``seed``, ``split.seed``): two runs of one setting pair, or repeat, by these."""
    return tuple(run.params.get(k) for k in SEED_KEYS)


def settings_of(run: Run, not_settings: list[str]) -> dict[str, Any]:
    return {k: v for k, v in run.params.items() if not ignored(k, not_settings)}


def group_runs(runs: list[Run], not_settings: list[str]) -> tuple[list[Group], list[tuple[Run, str]]]:
    """(groups, left out with the reason); groups in the order their first run came."""
    groups: dict[str, Group] = {}
    left_out = [(r, r.problem) for r in runs if r.problem]
    for run in (r for r in runs if not r.problem):
        settings = settings_of(run, not_settings)
        key = json.dumps([sorted(settings.items(), key=str), run.code, run.data], default=str)
        group = groups.setdefault(key, Group("", settings, run.code, run.data))
        twin = next((r for r in group.runs if seeds_of(r) == seeds_of(run)), None)
        if twin is not None:
            left_out.append((run, f"the same setting, code, data and seeds as {twin.name}: counted once"))
        else:
            group.runs.append(run)
    return list(groups.values()), left_out


def reference_of(groups: list[Group], wanted: str | None, head: Run | None = None,
                 head_settings: dict[str, Any] | None = None) -> tuple[Group, str]:
    """The group named ``wanted``; else the one with HEAD's settings, code and data; else the
    largest. Returns it and why it was picked, in words."""
    if wanted is not None:
        for g in groups:
            if g.name == wanted:
                return g, f"chosen by name ({wanted})"
        raise ValueError(f"compare: reference {wanted!r} is no group's name (groups: {[g.name for g in groups]})")
    for g in groups:
        if head is not None and any(r.rev == head.rev for r in g.runs):
            return g, "the group of HEAD's run"
    if head is not None:
        for g in groups:
            if g.code == head.code and g.data == head.data and g.settings == head_settings:
                return g, "the group with HEAD's settings, code and data (HEAD's own run did not finish)"
    return max(groups, key=lambda g: len(g.runs)), "the largest group (no group has HEAD's settings, code and data)"


def name_groups(groups: list[Group], reference: Group) -> None:
    """Each group by what differs from the reference: ``finetune.epochs=15``; code or data that
    differ are named too (``code 3fa2...``), so no two groups share a name."""
    reference.name = "reference"
    for g in groups:
        if g is reference:
            continue
        keys = sorted(set(g.settings) | set(reference.settings))
        diff = [f"{k}={_short(g.settings.get(k, '(absent)'))}" for k in keys
                if g.settings.get(k, "(absent)") != reference.settings.get(k, "(absent)")]
        if g.code != reference.code:
            diff.append(f"code {g.code}")
        if g.data != reference.data:
            diff.append(f"data {g.data}")
        g.name = ", ".join(diff) or "reference (again)"
    seen: dict[str, int] = {}
    for g in groups:  # equal names cannot happen (equal keys are one group), but never print two alike
        seen[g.name] = seen.get(g.name, 0) + 1
        if seen[g.name] > 1:
            g.name += f" #{seen[g.name]}"


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def summarize(group: Group, *, resamples: int, seed: int, level: float) -> None:
    """Each figure's n, mean, std (ddof 1) and interval (:func:`recipe.compare.stats.interval`)."""
    for figure in (*TEST_FIGURES, *OTHER_FIGURES):
        runs = [r for r in group.runs if figure in r.figures and np.isfinite(r.figures[figure])]
        if not runs:
            continue
        values = [r.figures[figure] for r in runs]
        one = per_image(runs[0].predictions) if len(runs) == 1 and figure in TEST_FIGURES else None
        low, high, how = interval(values, one, figure, resamples=resamples, seed=seed, level=level)
        # t's interval knows no bounds: an accuracy stays within [0, 1], a loss or a time above 0
        low, high = max(low, 0.0), min(high, 1.0) if "accuracy" in figure else high
        group.summary[figure] = {"n": len(values), "mean": float(np.mean(values)),
                                 "std": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"),
                                 "low": low, "high": high, "interval": how}


def compare(a: Group, b: Group, *, resamples: int, seed: int, level: float) -> Comparison:
    """B against A, seed by seed, on the same test images only."""
    out = Comparison(a.name, b.name)
    by_seed = {seeds_of(r): r for r in a.runs}
    pairs: list[tuple[Images, Images]] = []
    for run in b.runs:
        ref = by_seed.get(seeds_of(run))
        if ref is None:
            out.notes.append(f"{run.name} (seed {run.seed}): the reference has no run of this seed, not paired")
            continue
        classes = class_list(ref.predictions, run.predictions)  # one numbering for both runs
        ia, ib = per_image(ref.predictions, classes), per_image(run.predictions, classes)
        if ia.paths != ib.paths or not np.array_equal(ia.actual, ib.actual):
            out.notes.append(f"seed {run.seed}: not the same test images (another split or dataset), not paired")
            continue
        pairs.append((ia, ib))
        row: dict[str, Any] = {"seed": run.seed, "a": ref.name, "b": run.name}
        for figure in PAIRED_FIGURES:
            p = paired(ia, ib, figure, resamples=resamples, seed=seed, level=level)
            row.update({f"{figure}_diff": p.difference, f"{figure}_low": p.low, f"{figure}_high": p.high,
                        f"{figure}_only_a": p.only_a, f"{figure}_only_b": p.only_b, f"{figure}_p": p.p_value})
        out.per_seed.append(row)
    if pairs:
        for figure in PAIRED_FIGURES:
            out.mean[figure] = paired_mean(pairs, figure, resamples=resamples, seed=seed, level=level)
    return out
