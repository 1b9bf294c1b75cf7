"""Finished runs, read from git: the HEAD commit and every DVC experiment (``refs/exps``).

A DVC experiment is a git commit that holds, side by side, the params it ran with
(``params.yaml``), what it ran (``dvc.lock``: the md5 of every code and data dependency of every
stage) and what came out (the metrics files and ``outputs/evaluate/predictions.csv``, one row per
test image: DVC keeps them in git, ``cache: false``). That is why compare reads experiments and
not MLflow's runs: a run's settings, code, data and per-image results can be checked against one
another there, and nothing is read from a store that another project, or a half-finished run,
also writes to.

A run is *finished* when its ``dvc.lock`` has the evaluate stage and its commit holds evaluate's
metrics and predictions; anything else is listed with the reason and left out.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from recipe.core.config import flatten
from recipe.core.layout import TRAINING_STAGES

EVALUATE = "outputs/evaluate"
TIMED = ("baseline", *TRAINING_STAGES, "select", "evaluate", "export", "cv")  # stages whose metrics hold time_s
CODE_ROOTS = ("recipe/", "stages/", "hydra_plugins/")


@dataclass
class Run:
    """One finished run (or one left out: ``problem`` says why)."""

    name: str
    rev: str
    params: dict[str, Any] = field(default_factory=dict)  # flat: "finetune.lr" -> 0.001
    figures: dict[str, float] = field(default_factory=dict)
    predictions: pd.DataFrame | None = None
    code: str = ""  # fingerprint of the code deps in dvc.lock
    data: str = ""  # fingerprint of the ingested data in dvc.lock
    problem: str | None = None
    is_head: bool = False

    @property
    def seed(self) -> Any:
        return self.params.get("seed")


def git(root: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if proc.returncode:
        raise FileNotFoundError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else " ".join(args))
    return proc.stdout


def experiment_refs(root: Path) -> list[tuple[str, str]]:
    """(name, commit) of every DVC experiment: ``refs/exps/<baseline>/<name>``, not the queue's
    own refs (``refs/exps/celery/...``, ``refs/exps/exec/...``), which hold no results."""
    out = git(root, "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps")
    found = []
    for line in out.splitlines():
        ref, sha = line.split()
        parts = ref.split("/")  # refs/exps/<baseline[:2]>/<baseline[2:]>/<name>
        if len(parts) == 5 and re.fullmatch(r"[0-9a-f]{2}", parts[2]) and re.fullmatch(r"[0-9a-f]{38}", parts[3]):
            found.append((parts[-1], parts[2] + parts[3], sha))
    names = [n for n, _, _ in found]
    # one name under two baselines: each told apart by its baseline's commit
    return sorted((n if names.count(n) == 1 else f"{n} (on {base[:7]})", sha) for n, base, sha in found)


def show(root: Path, rev: str, path: str) -> str | None:
    try:
        return git(root, "show", f"{rev}:{path}")
    except FileNotFoundError:
        return None


def read_run(root: Path, rev: str, name: str) -> Run:
    """The run at commit ``rev``; ``problem`` set (and figures left empty) when it is not finished,
    is stale (its params.yaml or code are not what its dvc.lock ran) or cannot be read."""
    sha = git(root, "rev-parse", rev).strip()
    run = Run(name=name, rev=sha)
    try:
        return _read(root, sha, run)
    except (KeyError, ValueError, TypeError, yaml.YAMLError, pd.errors.ParserError) as exc:
        run.problem = f"unreadable: {type(exc).__name__}: {str(exc)[:200]}"
        return run


def _read(root: Path, sha: str, run: Run) -> Run:
    params_text, lock_text = show(root, sha, "params.yaml"), show(root, sha, "dvc.lock")
    if params_text is None or lock_text is None:
        run.problem = "no params.yaml or dvc.lock in its commit"
        return run
    run.params = flatten(yaml.safe_load(params_text) or {})
    lock = yaml.safe_load(lock_text) or {}
    run.code, run.data = fingerprints(lock)
    if "evaluate" not in lock.get("stages", {}):
        run.problem = "not finished: its dvc.lock has no evaluate stage"
        return run
    run.problem = stale(lock, run.params)
    if run.problem:
        return run
    metrics = {}
    for stage in ("evaluate", "select", *TIMED):
        text = show(root, sha, f"outputs/{stage}/metrics.json")
        metrics[stage] = json.loads(text) if text else {}
    predictions = show(root, sha, f"{EVALUATE}/predictions.csv")
    if not metrics["evaluate"].get("test") or not metrics["select"].get("chosen") or predictions is None:
        run.problem = "not finished: evaluate's or select's metrics, or evaluate's predictions, are missing"
        return run
    candidates = show(root, sha, "outputs/select/candidates.csv")
    run.figures = figures(metrics, pd.read_csv(io.StringIO(candidates)) if candidates else None)
    # class names stay strings: "NA", "None" or "01" are names, not missing values or numbers
    run.predictions = pd.read_csv(io.StringIO(predictions), dtype=str, keep_default_na=False)
    return run


def same_value(a: Any, b: Any) -> bool:
    """Equal as params: DVC writes 1.0e-08 to dvc.lock as ``1e-08``, which YAML 1.1 reads as a string."""
    if a == b:
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def stale(lock: dict, params: dict[str, Any]) -> str | None:
    """Why the commit's results are not its params' and code's: a params value a stage ran with
    (dvc.lock) that params.yaml no longer holds, or one code path with two md5s in two stages
    (a stage not rerun after a change); None when they agree."""
    seen: dict[str, str] = {}
    for name, stage in lock.get("stages", {}).items():
        for key, value in flatten((stage.get("params") or {}).get("params.yaml") or {}).items():
            if key in params and not same_value(params[key], value):
                return f"stale: params.yaml's {key} = {params[key]!r}, stage {name} ran with {value!r}"
        for dep in stage.get("deps", []):
            if dep["path"].startswith(CODE_ROOTS):
                if seen.setdefault(dep["path"], dep.get("md5", "")) != dep.get("md5", ""):
                    return f"stale: {dep['path']} differs between stages (a stage was not rerun after a change)"
    return None


def fingerprints(lock: dict) -> tuple[str, str]:
    """(code, data): short hashes of the md5s dvc.lock records for the code under recipe/,
    stages/ and hydra_plugins/, and for the ingested data (ingest's outputs)."""
    code: dict[str, str] = {}
    for stage in lock.get("stages", {}).values():
        for dep in stage.get("deps", []):
            if dep["path"].startswith(CODE_ROOTS):
                code[dep["path"]] = dep.get("md5", "")
    data = [(o["path"], o.get("md5", "")) for o in lock.get("stages", {}).get("ingest", {}).get("outs", [])]

    def digest(items: Any) -> str:
        return hashlib.sha256(json.dumps(sorted(items), default=str).encode()).hexdigest()[:10]

    return digest(code.items()), digest(data)


def figures(metrics: dict[str, dict], candidates: pd.DataFrame | None) -> dict[str, float]:
    """The figures compare reports for a run: test (plain and as chosen), valid, minutes, cv."""
    ev, chosen = metrics["evaluate"], metrics["select"]["chosen"]
    out: dict[str, float] = {}
    for suffix, part in (("", ev["test"]), ("_chosen", ev.get("test_chosen", ev["test"]))):
        for figure in ("accuracy", "balanced_accuracy", "log_loss"):
            if figure in part:
                out[f"test_{figure}{suffix}"] = float(part[figure])
    out["valid_accuracy_chosen"] = float(chosen.get("valid_accuracy_as_chosen", chosen.get("valid_accuracy", "nan")))
    if "valid_balanced_accuracy_as_chosen" in chosen:
        out["valid_balanced_accuracy_chosen"] = float(chosen["valid_balanced_accuracy_as_chosen"])
    out["valid_log_loss_chosen"] = float(chosen.get("valid_log_loss", "nan"))
    if candidates is not None:
        plain = candidates[(candidates["candidate"] == chosen["candidate"]) & (candidates["views"] == "none")]
        if len(plain):
            out["valid_accuracy"] = float(plain["valid_accuracy"].iloc[0])
            out["valid_log_loss"] = float(plain["valid_log_loss"].iloc[0])
    out["minutes"] = sum(float(metrics[s].get("time_s", 0.0)) for s in TIMED) / 60
    cv = metrics.get("cv", {})
    if cv.get("folds", 0):
        out["cv_accuracy"], out["cv_accuracy_std"] = float(cv["accuracy"]), float(cv["accuracy_std"])
        if "balanced_accuracy" in cv.get("pooled", {}):  # every rare image of train + valid counted once
            out["cv_balanced_accuracy"] = float(cv["pooled"]["balanced_accuracy"])
    return out


def collect(root: Path, revs: list[str] | None = None, experiments: bool = True) -> list[Run]:
    """HEAD (and any ``revs``: commits, branches, tags) plus every DVC experiment, each read with
    :func:`read_run`. A run whose commit is the same as another's is read once."""
    wanted = [("HEAD", "HEAD"), *((r, r) for r in (revs or []))]
    if experiments:
        wanted += experiment_refs(root)
    runs, seen = [], set()
    for i, (name, rev) in enumerate(wanted):
        try:
            sha = git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").strip()
        except FileNotFoundError:
            raise FileNotFoundError(f"{rev!r} is no commit, branch or tag of this repository") from None
        if sha not in seen:
            seen.add(sha)
            runs.append(read_run(root, sha, name if i else f"HEAD ({sha[:7]})"))
            runs[-1].is_head = i == 0
    return runs
