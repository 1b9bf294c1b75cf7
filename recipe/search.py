"""Bayesian search over the recipe's params: Optuna's ask/tell around ``dvc exp run``.

Contract: :func:`load_search` reads a search file (``conf/search/<name>.yaml``) into a validated
:class:`SearchConfig`, or raises :class:`ConfigError` with one line naming the key, the value and
what is allowed. :func:`search` runs ``cfg.trials`` trials in the project root, each one
``dvc exp run -n <study>-<N> -S key=value ...`` (so DVC skips, or restores from its run cache,
every stage whose params and inputs did not change), reads the objective from a metrics file the
experiment wrote, and tells Optuna. Trial 0 of a new study is the config's defaults (enqueued),
so the report can say whether, and at which trial, the search beat them. A failed run or a
missing metric fails that trial with a one-line reason and the search goes on; Ctrl-C fails the
running trial and stops cleanly. At the end: the trials table, the best trial, the trial that
first beat the default, the ``dvc exp apply`` command, and one MLflow run ``search-<study>`` with
the history and parameter-importance plots.

The sampler is TPE (Bergstra et al. 2011, "Algorithms for Hyper-Parameter Optimization"), seeded.
The study lives in SQLite at the root (``optuna.db``) unless a database URL is given; several
machines running the same command against one URL share the study (each runs its own trials in
its own checkout, so give each its own ``--seed``).

``python -m recipe.search [--space NAME|PATH] [--trials N] [--storage URL] [--study NAME]
[--seed N] [-S key=value ...] [-q]``
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, field_validator, model_validator

from recipe.config import validate
from recipe.errors import ConfigError, RecipeError
from recipe.schema import Strict

SEARCH_DIR = Path("conf/search")
OUT_DIR = Path("outputs/search")  # trial logs, the trials table, the plots (ignored by git, not a DVC output)
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"  # a study name must make valid git refs: <study>-<N>
_UNSET = object()


# --- the search file -------------------------------------------------------------------------

class FloatDist(Strict):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False  # Optuna's own defaults for a distribution, not recipe defaults
    step: PositiveFloat | None = None

    @model_validator(mode="after")
    def _range(self):
        return _check_range(self)


class IntDist(Strict):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: PositiveInt = 1

    @model_validator(mode="after")
    def _range(self):
        return _check_range(self)


class CategoricalDist(Strict):
    type: Literal["categorical"]
    choices: Annotated[list[Union[bool, int, float, str, None]], Field(min_length=1)]

    @field_validator("choices")
    @classmethod
    def _unique(cls, v):
        if len({json.dumps(c) for c in v}) != len(v):
            raise ValueError("choices must be distinct")
        return v


Distribution = Annotated[Union[FloatDist, IntDist, CategoricalDist], Field(discriminator="type")]


def _check_range(d):
    if not d.low < d.high:
        raise ValueError(f"low must be below high (got low {d.low}, high {d.high})")
    if d.log and d.low <= 0:
        raise ValueError(f"log needs low > 0 (got low {d.low})")
    if d.log and d.step not in (None, 1):
        raise ValueError("log and step cannot be used together")
    return d


class Objective(Strict):
    metrics: str  # a metrics file, relative to the project root
    key: Annotated[str, Field(min_length=1)]  # dotted key in it
    direction: Literal["minimize", "maximize"]

    @field_validator("metrics")
    @classmethod
    def _relative(cls, v):
        if Path(v).is_absolute() or ".." in Path(v).parts:
            raise ValueError("must be a path inside the project, relative to its root")
        return v

    @field_validator("key")
    @classmethod
    def _not_test(cls, v):
        if any(part.startswith("test") for part in v.split(".")):
            raise ValueError("a test-split metric would leak the test split into the choice of params; "
                             "use a validation metric (valid_loss, valid_accuracy)")
        return v


class Sampler(Strict):
    name: Literal["tpe", "random"]
    seed: int | None
    n_startup_trials: NonNegativeInt


class SearchConfig(Strict):
    study: Annotated[str, Field(pattern=f"^{_NAME}$")]
    trials: PositiveInt
    storage: str | None
    overrides: list[str]
    objective: Objective
    sampler: Sampler
    space: Annotated[dict[str, dict[str, Any]], Field(min_length=1)]


def search_file(space: str, root: Path) -> Path:
    """``--space``: a path to a YAML file, or a name in conf/search/."""
    for path in (Path(space), root / space, root / SEARCH_DIR / f"{space}.yaml"):
        if path.is_file():
            return path
    names = ", ".join(sorted(p.stem for p in (root / SEARCH_DIR).glob("*.yaml"))) or "none"
    raise ConfigError(f"--space {space!r}: no such file or name in {SEARCH_DIR}/ (there: {names})")


def load_search(path: Path, **cli: Any) -> SearchConfig:
    """Read a search file (following ``extends``), apply the command line's values, validate.

    ``cli`` holds ``trials``, ``storage``, ``study``, ``seed`` (None = keep the file's) and
    ``overrides`` (appended to the file's fixed overrides).
    """
    data = _read_extending(Path(path), seen=())
    for key in ("trials", "storage", "study"):
        if cli.get(key) is not None:
            data[key] = cli[key]
    if cli.get("seed") is not None:
        data.setdefault("sampler", {})["seed"] = cli["seed"]
    if cli.get("overrides"):
        data["overrides"] = list(data.get("overrides") or []) + list(cli["overrides"])
    try:
        cfg = validate("search", data, SearchConfig)
        for key, dist in cfg.space.items():
            validate(f"search.space.{key}", dist, Distribution)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (in {path})") from None
    return cfg


def _read_extending(path: Path, seen: tuple) -> dict:
    if path.resolve() in seen:
        raise ConfigError(f"{path}: extends itself (through {' -> '.join(p.name for p in seen)})")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = data.pop("extends", None)
    if base is None:
        return data
    parent = path.parent / f"{base}.yaml"
    if not isinstance(base, str) or not parent.is_file():
        raise ConfigError(f"search.extends = {base!r}: no such file {parent} (in {path})")
    merged = _merge(_read_extending(parent, seen + (path.resolve(),)), data)
    if "space" in data:  # a space is replaced whole: a file that names its params searches only those
        merged["space"] = data["space"]
    return merged


def _merge(base: dict, over: dict) -> dict:
    """Mappings merge key by key; anything else (lists included) is replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# --- the space against the real config -------------------------------------------------------

@dataclass(frozen=True)
class Param:
    key: str        # dotted params key, or a config group (augment, schedule@finetune.schedule)
    dist: Any       # FloatDist | IntDist | CategoricalDist
    group: bool
    default: Any    # the config's current value (group: the option chosen); _UNSET when outside the space


def compose_config(root: Path, overrides: list[str]) -> tuple[dict, dict]:
    """conf/ plus the fixed overrides, as `dvc exp run -S` composes it: (values, group choices)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    try:
        with initialize_config_dir(config_dir=str((root / "conf").resolve()), version_base=None):
            cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    except HydraException as exc:
        raise ConfigError(f"search.overrides = {list(overrides)}: {str(exc).splitlines()[0]}") from None
    choices = {k: v for k, v in OmegaConf.to_container(cfg.hydra.runtime.choices).items() if not k.startswith("hydra/")}
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra")
    return OmegaConf.to_container(OmegaConf.create(plain), resolve=True), choices


def check_space(cfg: SearchConfig, values: dict, choices: dict, conf: Path) -> list[Param]:
    """Every key of the space names a real params key or group; each group choice is a file."""
    fixed = {o.split("=", 1)[0].lstrip("+~") for o in cfg.overrides}
    params = []
    for key, raw in cfg.space.items():
        dist = validate(f"search.space.{key}", raw, Distribution)
        if key in fixed:
            raise ConfigError(f"search.space.{key}: also a fixed override; drop one of the two")
        if key in choices:
            params.append(_group_param(key, dist, choices[key], conf))
            continue
        node = values
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"search.space.{key}: not a params key or config group (check the spelling "
                                  "against params.yaml; groups: " + ", ".join(sorted(choices)) + ")")
            node = node[part]
        if isinstance(node, (dict, list)):
            raise ConfigError(f"search.space.{key}: a {type(node).__name__} in params.yaml; the space takes single values")
        params.append(Param(key, dist, False, _in_space(node, dist)))
    return params


def _group_param(key: str, dist: Any, chosen: str, conf: Path) -> Param:
    folder = conf / key.split("@")[0]
    options = sorted(p.stem for p in folder.glob("*.yaml"))
    if not isinstance(dist, CategoricalDist):
        raise ConfigError(f"search.space.{key}.type = {dist.type!r}: a config group takes type categorical "
                          f"with choices from {options}")
    for choice in dist.choices:
        if choice not in options:
            raise ConfigError(f"search.space.{key}.choices: {choice!r} is not an option of {key} "
                              f"(files in {folder.relative_to(conf.parent)}/: {', '.join(options)})")
    return Param(key, dist, True, _in_space(chosen, dist))


def _in_space(value: Any, dist: Any) -> Any:
    """The default as the space spells it, or _UNSET when the space cannot hold it (lr: auto)."""
    if isinstance(dist, CategoricalDist):
        for choice in dist.choices:
            if type(choice) is type(value) and choice == value or (_number(choice) and _number(value) and choice == value):
                return choice
        return _UNSET
    if not _number(value) or not dist.low <= value <= dist.high:
        return _UNSET
    if isinstance(dist, IntDist):
        return int(value) if value == int(value) and (int(value) - dist.low) % dist.step == 0 else _UNSET
    if dist.step is not None and not math.isclose((value - dist.low) / dist.step % 1, 0, abs_tol=1e-9):
        return _UNSET
    return float(value)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def suggest(trial: Any, params: list[Param], only: set[str] | None = None) -> dict[str, Any]:
    """Ask the trial for each param's value (``only``: just those keys, as for the default trial)."""
    out = {}
    for p in params:
        if only is not None and p.key not in only:
            continue
        d = p.dist
        if isinstance(d, FloatDist):
            out[p.key] = trial.suggest_float(p.key, d.low, d.high, log=d.log, step=d.step)
        elif isinstance(d, IntDist):
            out[p.key] = trial.suggest_int(p.key, d.low, d.high, log=d.log, step=d.step)
        else:
            out[p.key] = trial.suggest_categorical(p.key, d.choices)
    return out


def override(key: str, value: Any) -> str:
    """One ``-S`` value in Hydra's override grammar: ``finetune.lr=0.00031``, ``augment=side_on``.
    Floats keep every digit (repr), so the run uses exactly the value Optuna recorded."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = repr(value)  # 1e-05, 0.0003: Hydra reads both as floats
    elif isinstance(value, int):
        text = str(value)
    elif re.fullmatch(r"[A-Za-z_][\w./-]*", value) and value.lower() not in ("true", "false", "null", "nan", "inf"):
        text = value
    else:  # quoted, so Hydra keeps it a string: '3', 'a b', 'null'
        text = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return f"{key}={text}"


# --- one trial ---------------------------------------------------------------------------------

class TrialFailed(Exception):
    """The trial's run or metric is unusable; the message is the one-line reason."""


def run_experiment(root: Path, name: str, sets: list[str], log: Path, echo: bool) -> None:
    """``dvc exp run -n name -S ...`` in the root; its output goes to ``log`` (and the terminal)."""
    cmd = [sys.executable, "-m", "dvc", "exp", "run", "-n", name] + [a for s in sets for a in ("-S", s)]
    env = dict(os.environ)  # stage commands say `python`: make it this interpreter, as the Makefile does
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as f:
        f.write("$ dvc " + " ".join(cmd[3:]) + "\n")
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", bufsize=1)
        lines: deque[str] = deque(maxlen=200)  # the tail, for the reason of a failure
        try:
            for line in proc.stdout:
                f.write(line)
                lines.append(line.rstrip())
                if echo:
                    sys.stdout.write(line)
                    sys.stdout.flush()
            proc.wait()
        except KeyboardInterrupt:  # a terminal's Ctrl-C reached dvc too; a `kill -INT` of ours did not
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    if proc.returncode != 0:
        errors = [ln.strip() for ln in lines if ln.lstrip().upper().startswith("ERROR") or "error:" in ln]
        reason = errors[-1] if errors else f"exit code {proc.returncode}"
        raise TrialFailed(f"dvc exp run failed: {reason[:300]} (log: {log.relative_to(root)})")


def read_objective(root: Path, objective: Objective) -> float:
    path = root / objective.metrics
    if not path.is_file():
        raise TrialFailed(f"{objective.metrics}: not found after the run")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML
    node = data
    for part in objective.key.split("."):
        if not isinstance(node, dict) or part not in node:
            keys = ", ".join(sorted(node)) if isinstance(node, dict) else type(node).__name__
            raise TrialFailed(f"{objective.key}: not in {objective.metrics} (there: {keys})")
        node = node[part]
    if not _number(node) or not math.isfinite(node):
        raise TrialFailed(f"{objective.key} = {node!r} in {objective.metrics}: not a finite number")
    last = objective.key.split(".")[-1]
    if last.startswith("valid") and isinstance(data, dict) and data.get("fit_on", "train") != "train":
        raise TrialFailed(f"{objective.key}: not held out (the stage was fit on {data['fit_on']})")
    return float(node)


# --- the study ------------------------------------------------------------------------------------

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


def storage_url(cfg: SearchConfig, root: Path) -> str:
    return cfg.storage or f"sqlite:///{root / 'optuna.db'}"


def open_study(cfg: SearchConfig, root: Path) -> Any:
    import optuna

    sampler = (optuna.samplers.TPESampler(seed=cfg.sampler.seed, n_startup_trials=cfg.sampler.n_startup_trials)
               if cfg.sampler.name == "tpe" else optuna.samplers.RandomSampler(seed=cfg.sampler.seed))
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
    print(f"study {cfg.study!r} in {_safe_url(storage_url(cfg, root))}: {len(study.trials)} trials so far; "
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


# --- the report -------------------------------------------------------------------------------

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


def _safe_url(url: str) -> str:
    """The storage URL without its password (it goes to the terminal and to MLflow)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


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


def log_search(result: Result, cfg: SearchConfig, root: Path, experiment: str, files: list[Path]) -> str:
    """One MLflow run ``search-<study>``: the best params and value, the table and the plots."""
    import mlflow

    from recipe.tracking import _experiment_id, tracking_uri

    location = None if os.environ.get("MLFLOW_TRACKING_URI") else (root / "mlartifacts").as_uri()
    mlflow.set_tracking_uri(tracking_uri(root))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    best, default, first = result.best, result.default, result.first_beat
    tags = {"search.study": cfg.study, "search.storage": _safe_url(storage_url(cfg, root)),
            "search.objective": f"{cfg.objective.direction} {cfg.objective.key} ({cfg.objective.metrics})",
            "search.sampler": f"{cfg.sampler.name} seed {cfg.sampler.seed}", "git_commit": commit or "unknown",
            "search.overrides": " ".join(cfg.overrides)}
    if best is not None:
        tags.update({"best_trial": str(best.number), "best_experiment": best.user_attrs.get("experiment", ""),
                     "dvc_exp_apply": result.apply})
    with mlflow.start_run(experiment_id=_experiment_id(mlflow, experiment, location), run_name=f"search-{cfg.study}",
                          tags=tags) as run:
        if best is not None:
            mlflow.log_params({re.sub(r"[^\w./ -]", "_", k): v for k, v in best.params.items()})  # no '@' in MLflow names
            mlflow.log_metric("best_value", best.value)
        if default is not None and default.value is not None:
            mlflow.log_metric("default_value", default.value)
        if first is not None:
            mlflow.log_metric("trials_to_beat_default", first.number - default.number)
        for t in result.study.get_trials(deepcopy=False):
            if t.value is not None:
                mlflow.log_metric("value", t.value, step=t.number)
        for path in [result.out / "trials.txt", result.out / "trials.csv", *files]:
            mlflow.log_artifact(str(path))
        return run.info.run_id


def main(argv: list[str] | None = None) -> Result:
    parser = argparse.ArgumentParser(prog="python -m recipe.search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="default", help="a name in conf/search/ or a YAML path (default: default)")
    parser.add_argument("--trials", type=int, help="trials this process runs (default: the file's)")
    parser.add_argument("--storage", help="Optuna storage URL shared by several machines (default: sqlite:///<root>/optuna.db)")
    parser.add_argument("--study", help="study name (default: the file's); trial N runs as experiment <study>-N")
    parser.add_argument("--seed", type=int, help="sampler seed (default: the file's)")
    parser.add_argument("-S", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a fixed override for every trial (repeatable)")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not echo dvc's output (it is still logged)")
    args = parser.parse_args(argv)
    from recipe.paths import project_root

    root = project_root()
    try:
        cfg = load_search(search_file(args.space, root), trials=args.trials, storage=args.storage, study=args.study,
                          seed=args.seed, overrides=args.overrides)
        result = search(cfg, root, echo=not args.quiet)
        files = plots(result, cfg)
        run_id = log_search(result, cfg, root, result.experiment, files)
        print(f"MLflow run search-{cfg.study}: {run_id}")
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if result.best is not None:
        print(f"\n{result.apply}")
    return result


if __name__ == "__main__":
    main()
