"""The study: Optuna's ask/tell loop, one :mod:`recipe.search.trial` per ask.

Contract: :func:`search` composes the config, checks the space, opens (or resumes) the study
in its storage (:func:`storage_url`: SQLite at the root unless a database URL is given; a study
reopened with the other direction is refused) and runs ``cfg.trials`` trials. Trial 0 of a new
study is the config's defaults (enqueued, no override of the space), so the report can say
whether, and at which trial, the search beat them. A failed run or a missing metric fails that
trial with a one-line reason and the search goes on; Ctrl-C fails the running trial and stops
cleanly; any other error fails the trial (never left RUNNING in a shared study) and propagates.
Returns :func:`recipe.search.report.summarize`'s :class:`Result`.

The sampler is the one the search file names (:mod:`recipe.search.samplers`: TPE, a Gaussian
process with expected improvement, or random), seeded.
"""
from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from recipe.core.errors import ConfigError
from recipe.search.config import SearchConfig
from recipe.search.report import Result, _show, summarize
from recipe.search.samplers import build_sampler
from recipe.search.space import _UNSET, Param, check_space, compose_config, override, suggest
from recipe.search.trial import TrialFailed, read_objective, run_experiment
from recipe.track.tracking import mask_uri

OUT_DIR = Path("outputs/search")  # trial logs, the trials table, the plots (ignored by git, not a DVC output)


def storage_url(cfg: SearchConfig, root: Path) -> str:
    return cfg.storage or f"sqlite:///{root / 'optuna.db'}"


def open_study(cfg: SearchConfig, root: Path) -> Any:
    import optuna

    sampler = build_sampler(cfg.sampler.name, seed=cfg.sampler.seed, n_startup_trials=cfg.sampler.n_startup_trials)
    study = optuna.create_study(study_name=cfg.study, storage=storage_url(cfg, root), sampler=sampler,
                                direction=cfg.objective.direction, load_if_exists=True)
    if study.direction.name.lower() != cfg.objective.direction:
        raise ConfigError(f"search.objective.direction = {cfg.objective.direction!r}: study {cfg.study!r} "
                          f"already exists with direction {study.direction.name.lower()}; use another --study")
    return study


def search(cfg: SearchConfig, root: Path, *, echo: bool = True) -> Result:
    root = Path(root).resolve()
    values, choices = compose_config(root, cfg.overrides)
    params = check_space(cfg, values, choices, root / "conf")
    study = open_study(cfg, root)
    _check_names_free(root, cfg.study, study)
    out = root / OUT_DIR / cfg.study
    defaults = {p.key: p.default for p in params if p.default is not _UNSET}
    if not any(t.user_attrs.get("default") for t in study.get_trials(deepcopy=False)):
        study.enqueue_trial(defaults, user_attrs={"default": True})
        left = [f"{p.key} = {_show(_lookup(values, choices, p.key))}" for p in params if p.default is _UNSET]
        if left:
            print(f"trial {len(study.trials) - 1} runs the defaults; outside the space (left to the config): "
                  + ", ".join(left))
    print(f"study {cfg.study!r} in {mask_uri(storage_url(cfg, root))}: {len(study.trials)} trials so far; "
          f"objective {cfg.objective.direction} {cfg.objective.key} of {cfg.objective.metrics}")

    ran = None
    try:
        for _ in range(cfg.trials):
            ran = _one_trial(study, cfg, root, params, defaults, out, echo)
    except KeyboardInterrupt:
        print("\n=== interrupted: the search stops here", flush=True)
    result = summarize(study, cfg, out, values["tracking"]["experiment"])
    if ran:
        print(f"(the workspace holds the last trial's run, {ran}: `dvc exp apply <name>` puts another one there, "
              "`git checkout -- params.yaml dvc.lock outputs && dvc checkout` goes back to the commit)")
    return result


def _one_trial(study: Any, cfg: SearchConfig, root: Path, params: list[Param], defaults: dict, out: Path,
               echo: bool) -> str:
    """Ask, run, tell; returns the experiment's name. KeyboardInterrupt fails the trial and goes on up."""
    from optuna.trial import TrialState

    trial = study.ask()
    name = f"{cfg.study}-{trial.number}"
    is_default = bool(trial.user_attrs.get("default"))
    t0 = time.time()
    try:
        chosen = suggest(trial, params, only=set(defaults) if is_default else None)
        # The default trial passes no space override: the config's own values, `auto` included.
        sets = list(cfg.overrides) + ([] if is_default else [override(k, v) for k, v in chosen.items()])
        for key, value in (("experiment", name), ("host", socket.gethostname()), ("overrides", sets)):
            trial.set_user_attr(key, value)
        print(f"\n=== trial {trial.number}{' (the defaults)' if is_default else ''}: dvc exp run -n {name} "
              + " ".join(f"-S {s}" for s in sets), flush=True)
        run_experiment(root, name, sets, out / f"trial-{trial.number:04d}.log", echo)
        value = read_objective(root, cfg.objective)
    except TrialFailed as exc:
        trial.set_user_attr("reason", str(exc))
        study.tell(trial, state=TrialState.FAIL)
        print(f"=== trial {trial.number}: FAIL ({exc}) [{time.time() - t0:.0f} s]", flush=True)
        return name
    except KeyboardInterrupt:
        trial.set_user_attr("reason", "interrupted (Ctrl-C)")
        study.tell(trial, state=TrialState.FAIL)
        raise
    except BaseException:
        trial.set_user_attr("reason", "error in the search itself (traceback printed)")
        study.tell(trial, state=TrialState.FAIL)  # never leave a trial RUNNING in a shared study
        raise
    study.tell(trial, value)
    best = study.best_trial
    print(f"=== trial {trial.number}: {cfg.objective.key} = {value:.6g} (best {best.value:.6g}, trial "
          f"{best.number}) [{time.time() - t0:.0f} s]", flush=True)
    return name


def _lookup(values: dict, choices: dict, key: str) -> Any:
    if key in choices:
        return choices[key]
    for part in key.split("."):
        values = values[part]
    return values


def _check_names_free(root: Path, study_name: str, study: Any) -> None:
    """An experiment <study>-<N> left by an earlier study of that name would stop trial N."""
    proc = subprocess.run([sys.executable, "-m", "dvc", "exp", "ls", "--all-commits", "--name-only"], cwd=root,
                          capture_output=True, text=True)
    ours = {t.user_attrs.get("experiment") for t in study.get_trials(deepcopy=False)}
    stale = sorted(n for n in proc.stdout.split() if re.fullmatch(rf"{re.escape(study_name)}-\d+", n) and n not in ours)
    if stale:
        raise ConfigError(f"search.study = {study_name!r}: experiments {', '.join(stale[:5])} exist but are not trials "
                          f"of this study (another storage?); use another --study or `dvc exp remove` them")

