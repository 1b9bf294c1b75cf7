"""The search's MLflow run: one run ``search-<study>`` in the experiment ``tracking.experiment``.

Contract: :func:`log_search` logs the best trial's params, ``best_value``, ``default_value``,
``trials_to_beat_default``, ``value`` per trial (step = trial number), the search's settings as
tags, and as artifacts the trials table and the plots. Every call goes through
:mod:`recipe.track.tracking` (:func:`recipe.track.tracking.tracked`), as a stage's do: a store that cannot
be reached costs one warning on stderr and a record in ``outputs/unlogged/`` (or, where that cannot be
written, a count of the calls dropped), never the search's
exit status. Returns the run's id, or None when the run could not be opened.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

from recipe.search.config import SearchConfig
from recipe.search.report import Result
from recipe.search.study import storage_url
from recipe.track import tracking


def log_search(result: Result, cfg: SearchConfig, root: Path, experiment: str, files: list[Path]) -> str | None:
    """One MLflow run ``search-<study>``: the best params and value, the table and the plots."""
    import mlflow

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    best, default, first = result.best, result.default, result.first_beat
    tags = {"search.study": cfg.study, "search.storage": tracking.mask_uri(storage_url(cfg, root)),
            "search.objective": f"{cfg.objective.direction} {cfg.objective.key} ({cfg.objective.metrics})",
            "search.sampler": f"{cfg.sampler.name} seed {cfg.sampler.seed}", "git_commit": commit or "unknown",
            "search.overrides": " ".join(cfg.overrides)}
    if best is not None:
        tags.update({"best_trial": str(best.number), "best_experiment": best.user_attrs.get("experiment", ""),
                     "dvc_exp_apply": result.apply})
    with tracking.tracked(f"search-{cfg.study}") as tracker:
        # After a failed call the rest are not sent but kept, with their values, in outputs/unlogged/.
        run = tracking.guarded("open the search's run", tracking.start_top_run, root, experiment, f"search-{cfg.study}", tags)
        status = "FAILED"
        try:
            if best is not None:  # no '@' in MLflow names
                tracking.guarded("log params", mlflow.log_params,
                                 {re.sub(r"[^\w./ -]", "_", k): v for k, v in best.params.items()})
                tracking.log_metrics({"best_value": best.value})
            if default is not None and default.value is not None:
                tracking.log_metrics({"default_value": default.value})
            if first is not None:
                tracking.log_metrics({"trials_to_beat_default": first.number - default.number})
            for t in result.study.get_trials(deepcopy=False):
                if t.value is not None:
                    tracking.log_metrics({"value": t.value}, step=t.number)
            for path in [result.out / "trials.txt", result.out / "trials.csv", *files]:
                tracking.log_artifact(path)
            status = "FINISHED"
        finally:
            if tracker.live:  # after a failure the store is not asked again
                tracking.guarded("end the search's run", mlflow.end_run, status)
        return None if run is None else run.info.run_id
