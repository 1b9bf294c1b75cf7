"""What compare writes: ``compare.md`` (the tables), ``groups.csv``, ``runs.csv``, ``pairs.csv``,
``frontier.png`` (test accuracy as chosen against pipeline minutes, each group a point with its
spread), and one MLflow run ``compare`` that carries them all.

Accuracies print as percentages with two decimals, log losses with four, minutes with one. The
markdown never shows a mean without its run count; a group of one run is said to have no spread.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen before pyplot loads)
import pandas as pd  # noqa: E402

from recipe.compare.groups import PAIRED_FIGURES, Comparison, Group  # noqa: E402
from recipe.compare.runs import Run  # noqa: E402

COLUMNS = [("test_accuracy", "test plain"), ("test_accuracy_chosen", "test as chosen"),
           ("test_balanced_accuracy_chosen", "test balanced (chosen)"), ("test_log_loss_chosen", "test log loss (chosen)"),
           ("valid_accuracy_chosen", "valid as chosen"), ("valid_log_loss_chosen", "valid log loss (chosen)"),
           ("minutes", "stage minutes"), ("cv_accuracy", "cv accuracy (out of fold)"),
           ("cv_balanced_accuracy", "cv balanced (pooled out of fold)")]


def fmt(figure: str, value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if "log_loss" in figure:
        return f"{value:.4f}"
    if figure == "minutes":
        return f"{value:.1f}"
    return f"{100 * value:.2f}%"


def cell(figure: str, s: dict[str, float] | None) -> str:
    if not s:
        return "—"
    spread = f" ± {fmt(figure, s['std']).rstrip('%')}" if s["n"] > 1 else ""
    if s["low"] == s["high"]:  # one run of a figure with no per-image record: no interval to give
        return f"{fmt(figure, s['mean'])}{spread}"
    return f"{fmt(figure, s['mean'])}{spread} [{fmt(figure, s['low'])}, {fmt(figure, s['high'])}]"


def markdown(groups: list[Group], comparisons: list[Comparison], left_out: list[tuple[Run, str]],
             level: float, command: str, *, reference: Group, why: str) -> str:
    pct = f"{100 * level:g}%"
    lines = [f"# Runs compared\n\nMade by `{command}`. Each cell: mean over the group's runs ± their standard "
             f"deviation (ddof 1), then the {pct} interval of the mean: Student's t on the runs' values with two "
             "runs or more (each seed has its own split, so their spread holds the test split's sampling too); "
             "with one run, a bootstrap of its test images (test figures only). \"stage minutes\": the stages' "
             "`time_s` summed (baseline, train_head, finetune, resize, select, evaluate, export, cv's own step; "
             "not lr_find, the data stages or cross-validation's fold stages).\n", "## Groups\n",
             "| group | runs (seeds) | " + " | ".join(title for _, title in COLUMNS) + " |",
             "|---|---|" + "---:|" * len(COLUMNS)]
    for g in groups:
        seeds = ", ".join(str(r.seed) for r in g.runs)
        lines.append(f"| {g.name} | {len(g.runs)} ({seeds}) | "
                     + " | ".join(cell(f, g.summary.get(f)) for f, _ in COLUMNS) + " |")
    singles = [g.name for g in groups if len(g.runs) == 1]
    if singles:
        lines.append(f"\nOne run only, no spread over seeds (the interval is the test images' alone): "
                     f"{'; '.join(singles)}.")
    lines.append(f"\nThe reference: {why}; code `{reference.code}`, data `{reference.data}` (fingerprints of "
                 "dvc.lock's md5s). Every other group is named by what it changes.")
    lines += _pairs_markdown(comparisons, pct)
    lines += ["\n## Runs\n", "| run | commit | group | seed | test plain | test as chosen | valid as chosen | minutes |",
              "|---|---|---|---:|---:|---:|---:|---:|"]
    for g in groups:
        for r in g.runs:
            f = r.figures
            lines.append(f"| {r.name} | {r.rev[:7]} | {g.name} | {r.seed} | {fmt('a', f.get('test_accuracy'))} | "
                         f"{fmt('a', f.get('test_accuracy_chosen'))} | {fmt('a', f.get('valid_accuracy_chosen'))} | "
                         f"{fmt('minutes', f.get('minutes'))} |")
    if left_out:
        lines += ["\n## Left out\n"] + [f"- {r.name} ({r.rev[:7]}): {why}" for r, why in left_out]
    return "\n".join(lines) + "\n"


def _pairs_markdown(comparisons: list[Comparison], pct: str) -> list[str]:
    if not comparisons:
        return []
    lines = ["\n## Against the reference, on the same test images\n",
             f"B minus the reference, per seed and as the mean over seeds, with the {pct} paired bootstrap "
             "interval; McNemar's exact test counts the images only one of the two gets right.\n",
             "| group (B) | seed | figure | B − reference | interval | only reference right | only B right | McNemar p |",
             "|---|---:|---|---:|---|---:|---:|---:|"]
    for c in comparisons:
        for figure in PAIRED_FIGURES:
            for row in c.per_seed:
                lines.append(f"| {c.b} | {row['seed']} | {figure} | {_pp(row[f'{figure}_diff'])} | "
                             f"[{_pp(row[f'{figure}_low'])}, {_pp(row[f'{figure}_high'])}] | {row[f'{figure}_only_a']} | "
                             f"{row[f'{figure}_only_b']} | {row[f'{figure}_p']:.3g} |")
            if figure in c.mean:
                d, lo, hi = c.mean[figure]
                lines.append(f"| {c.b} | mean of {len(c.per_seed)} | {figure} | **{_pp(d)}** | [{_pp(lo)}, {_pp(hi)}] "
                             "| | | |")
        lines += [f"\n- {c.b}: {note}" for note in c.notes]
    return lines


def _pp(x: float) -> str:
    return f"{100 * x:+.2f} pts"


def tables(groups: list[Group], comparisons: list[Comparison], left_out: list[tuple[Run, str]]) -> dict[str, pd.DataFrame]:
    grows = [{"group": g.name, "figure": f, **s, "code": g.code, "data": g.data} for g in groups for f, s in g.summary.items()]
    rrows = [{"run": r.name, "commit": r.rev, "group": g.name, "seed": r.seed, **r.figures, "left_out": ""}
             for g in groups for r in g.runs]
    rrows += [{"run": r.name, "commit": r.rev, "group": "", "seed": r.seed, "left_out": why} for r, why in left_out]
    prows = [{"reference": c.a, "group": c.b, **row} for c in comparisons for row in c.per_seed]
    prows += [{"reference": c.a, "group": c.b, "seed": "mean", f"{f}_diff": d, f"{f}_low": lo, f"{f}_high": hi}
              for c in comparisons for f, (d, lo, hi) in c.mean.items()]
    return {"groups.csv": pd.DataFrame(grows), "runs.csv": pd.DataFrame(rrows), "pairs.csv": pd.DataFrame(prows)}


def frontier(groups: list[Group], path: Path, level: float) -> Path:
    """Test accuracy as chosen (mean, with its interval) against stage minutes (mean ± std)."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for i, g in enumerate(groups):
        acc, mins = g.summary.get("test_accuracy_chosen"), g.summary.get("minutes")
        if not acc or not mins:
            continue
        yerr = [[100 * (acc["mean"] - acc["low"])], [100 * (acc["high"] - acc["mean"])]]
        xerr = None if mins["n"] < 2 else [[mins["std"]], [mins["std"]]]
        ax.errorbar(mins["mean"], 100 * acc["mean"], yerr=yerr, xerr=xerr, fmt="o", capsize=4,
                    color=f"C{i % 10}", label=f"{g.name} (n={len(g.runs)})")
    ax.set_xlabel("pipeline minutes (stages' time_s summed; bar: ± std over runs)")
    ax.set_ylabel(f"test accuracy as chosen, % (bar: {100 * level:g}% interval)")
    ax.set_title("Accuracy against minutes, one point per setting")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_to_mlflow(root: Path, experiment: str, out: Path, groups: list[Group], files: list[Path]) -> str | None:
    """One MLflow run ``compare``: each group's means as metrics (``g<i>.<figure>``), its name as a
    tag, and every file written, through :mod:`recipe.track.tracking` (a store that cannot be
    reached costs a warning, not the command)."""
    import mlflow

    from recipe.track import tracking

    with tracking.tracked("compare") as tracker:
        run = tracking.guarded("open the compare run", tracking.start_top_run, root, experiment, "compare",
                               {"recipe.kind": "compare"})
        status = "FAILED"
        try:
            for i, g in enumerate(groups):
                tracking.set_tag(f"g{i}.name", g.name[:5000])
                tracking.log_metrics({f"g{i}.{f}": s["mean"] for f, s in g.summary.items()})
                tracking.log_metrics({f"g{i}.runs": float(len(g.runs))})
            for path in files:
                tracking.log_artifact(path)
            status = "FINISHED"
        finally:
            if tracker.live:
                tracking.guarded("end the compare run", mlflow.end_run, status)
    return None if run is None else run.info.run_id
