"""The report at the end of a search: the best trial, the trials table, Optuna's plots.

Contract: :func:`summarize` finds the best complete trial and the first trial after the
default that beat it, writes ``trials.txt`` and ``trials.csv`` to the study's output folder,
prints the table, the best trial's params, the comparison with the default and the
``dvc exp apply`` command, and returns a :class:`Result`. :func:`plots` writes the optimization
history and the parameter importances (fANOVA) as PNGs, and prints why it skipped one.
"""
from __future__ import annotations

import json
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipe.search.config import SearchConfig


@dataclass
class Result:
    study: Any
    default: Any         # the default trial (FrozenTrial), or None
    best: Any            # the best complete trial, or None
    first_beat: Any      # the first trial after the default with a better value, or None
    apply: str | None    # `dvc exp apply <name>` for the best trial
    table: str
    out: Path
    experiment: str      # the MLflow experiment (params: tracking.experiment)



def _better(a: float, b: float, direction: str) -> bool:
    return a < b if direction == "minimize" else a > b


def summarize(study: Any, cfg: SearchConfig, out: Path, experiment: str) -> Result:
    from optuna.trial import TrialState

    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    default = next((t for t in trials if t.user_attrs.get("default")), None)
    best = min(done, key=lambda t: t.value if cfg.objective.direction == "minimize" else -t.value) if done else None
    first = None
    if default is not None and default.state == TrialState.COMPLETE:
        first = next((t for t in done if t.number > default.number
                      and _better(t.value, default.value, cfg.objective.direction)), None)
    table = trials_table(trials, cfg.objective.key, best)
    out.mkdir(parents=True, exist_ok=True)
    (out / "trials.txt").write_text(table + "\n", encoding="utf-8")
    study.trials_dataframe().to_csv(out / "trials.csv", index=False)
    print("\n" + table)
    apply = None
    if best is None:
        print("\nno trial completed")
    else:
        exp = best.user_attrs.get("experiment")
        apply = f"dvc exp apply {exp}"
        print(f"\nbest: trial {best.number}, {cfg.objective.key} = {best.value:.6g}, experiment {exp}")
        for key, value in best.params.items():
            print(f"  {key} = {_show(value)}")
        if default is None or default.state != TrialState.COMPLETE:
            print("the default trial did not complete: nothing to compare with")
        elif first is None:
            print(f"no trial beat the default (trial {default.number}, {default.value:.6g})")
        else:
            print(f"first beat the default ({default.value:.6g}, trial {default.number}) at trial {first.number}: "
                  f"{first.value:.6g}, {first.number - default.number} trials after it")
        host = best.user_attrs.get("host")
        elsewhere = f" (on {host}, which ran it; here `dvc exp pull <remote> {exp}` first)" if host != socket.gethostname() else ""
        print(f"reproduce it: {apply}{elsewhere}")
    return Result(study, default, best, first, apply, table, out, experiment)


def trials_table(trials: list, metric: str, best: Any) -> str:
    rows = [("trial", "state", metric, "seconds", "experiment", "params / reason")]
    for t in trials:
        secs = f"{(t.datetime_complete - t.datetime_start).total_seconds():.0f}" if t.datetime_complete and t.datetime_start else ""
        notes = " ".join(f"{k}={_show(v)}" for k, v in t.params.items())
        if t.user_attrs.get("default"):
            notes = "(defaults) " + notes
        if t.user_attrs.get("reason"):
            notes += f"  [{t.user_attrs['reason']}]"
        mark = " *" if best is not None and t.number == best.number else ""
        rows.append((str(t.number) + mark, t.state.name, "" if t.value is None else f"{t.value:.6g}", secs,
                     t.user_attrs.get("experiment", ""), notes))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5] for r in rows).rstrip()


def _show(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def plots(result: Result, cfg: SearchConfig) -> list[Path]:
    """Optuna's optimization history and parameter importances (fANOVA) as PNGs; skipped ones say why."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from matplotlib.ticker import MaxNLocator
    from optuna.exceptions import ExperimentalWarning
    from optuna.trial import TrialState
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    warnings.filterwarnings("ignore", category=ExperimentalWarning)
    done = [t for t in result.study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    files = []
    if not done:
        print("history plot skipped: no completed trial")
        return files
    ax = plot_optimization_history(result.study, target_name=cfg.objective.key)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers
    files.append(_save(ax, result.out / "history.png", plt))
    # Importance compares trials over the whole space: a default trial that left a param to the
    # config (lr: auto) is not one of them.
    full = [t for t in done if set(cfg.space) <= set(t.params)]
    varied = [k for k in cfg.space if len({json.dumps(t.params[k]) for t in full}) > 1]
    if len(full) < 2 or not varied or len({t.value for t in full}) < 2:
        print(f"importance plot skipped: needs 2 or more completed trials over the whole space with different "
              f"params and values (have {len(full)} such trials, {len(varied)} params varied, "
              f"{len({t.value for t in full})} distinct values)")
        return files
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created in memory"
    sub = optuna.create_study(direction=cfg.objective.direction)
    optuna.logging.set_verbosity(verbosity)
    sub.add_trials(full)
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=cfg.sampler.seed)
    ax = plot_param_importances(sub, evaluator=evaluator, params=varied, target_name=cfg.objective.key)
    files.append(_save(ax, result.out / "importance.png", plt))
    return files


def _save(ax: Any, path: Path, plt: Any) -> Path:
    fig = ax.figure
    fig.set_size_inches(8, 5)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path

