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
from recipe.compare.stats import PREDICTED, Images, group_interval, interval_of_values, paired, paired_mean, per_image

TEST_FIGURES = tuple(PREDICTED)  # bootstrapped over seeds and test images
OTHER_FIGURES = ("test_log_loss", "test_log_loss_chosen", "valid_accuracy", "valid_accuracy_chosen",
                 "valid_balanced_accuracy_chosen", "valid_log_loss", "valid_log_loss_chosen", "minutes",
                 "cv_accuracy")  # bootstrapped over the runs only: no per-image record
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
        twin = next((r for r in group.runs if r.seed == run.seed), None)
        if twin is not None:
            left_out.append((run, f"the same setting, code, data and seed as {twin.name}: counted once"))
        else:
            group.runs.append(run)
    return list(groups.values()), left_out


def reference_of(groups: list[Group], wanted: str | None) -> Group:
    """The group named ``wanted``, else the one holding HEAD, else the largest."""
    if wanted is not None:
        for g in groups:
            if g.name == wanted:
                return g
        raise ValueError(f"compare: reference {wanted!r} is no group's name (groups: {[g.name for g in groups]})")
    for g in groups:
        if any(r.name.startswith("HEAD") for r in g.runs):
            return g
    return max(groups, key=lambda g: len(g.runs))


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
    images = [per_image(r.predictions) for r in group.runs]
    for figure in (*TEST_FIGURES, *OTHER_FIGURES):
        values = [r.figures[figure] for r in group.runs if figure in r.figures and np.isfinite(r.figures[figure])]
        if not values:
            continue
        if figure in TEST_FIGURES:
            low, high = group_interval(images, figure, resamples=resamples, seed=seed, level=level)
        else:
            low, high = interval_of_values(values, resamples=resamples, seed=seed, level=level)
        group.summary[figure] = {"n": len(values), "mean": float(np.mean(values)),
                                 "std": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"),
                                 "low": low, "high": high}


def compare(a: Group, b: Group, *, resamples: int, seed: int, level: float) -> Comparison:
    """B against A, seed by seed, on the same test images only."""
    out = Comparison(a.name, b.name)
    by_seed = {r.seed: r for r in a.runs}
    pairs: list[tuple[Images, Images]] = []
    for run in b.runs:
        if run.seed not in by_seed:
            out.notes.append(f"{run.name} (seed {run.seed}): the reference has no run of this seed, not paired")
            continue
        ia, ib = per_image(by_seed[run.seed].predictions), per_image(run.predictions)
        if ia.paths != ib.paths or not np.array_equal(ia.actual, ib.actual):
            out.notes.append(f"seed {run.seed}: not the same test images (another split or dataset), not paired")
            continue
        pairs.append((ia, ib))
        row: dict[str, Any] = {"seed": run.seed, "a": by_seed[run.seed].name, "b": run.name}
        for figure in PAIRED_FIGURES:
            p = paired(ia, ib, figure, resamples=resamples, seed=seed, level=level)
            row.update({f"{figure}_diff": p.difference, f"{figure}_low": p.low, f"{figure}_high": p.high,
                        f"{figure}_only_a": p.only_a, f"{figure}_only_b": p.only_b, f"{figure}_p": p.p_value})
        out.per_seed.append(row)
    if pairs:
        for figure in PAIRED_FIGURES:
            out.mean[figure] = paired_mean(pairs, figure, resamples=resamples, seed=seed, level=level)
    return out
