"""The MLflow spine: one parent run per pipeline execution, one child run per stage.

A pipeline execution is one ``dvc repro`` or one DVC experiment. DVC starts every stage as a
separate process, so the stages of one execution find their shared parent run by a key:

1. ``RECIPE_PIPELINE_ID`` when set (a caller that wants to group runs itself);
2. else the nearest ancestor ``dvc`` process, by boot id, pid and start time (Linux /proc):
   every stage of one ``dvc repro``, and of one queued or ``--temp`` experiment, shares it,
   and two experiments never do;
3. else the stage's own process: a stage run by hand gets a parent of its own.

The default store is SQLite plus an artifacts folder at the project root (see
:func:`recipe.paths.project_root`); ``MLFLOW_TRACKING_URI`` overrides it for a team server.
"""
from __future__ import annotations

import os
import platform
import socket
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from recipe.config import flatten, read_params, section_hash
from recipe.paths import git_commit, project_root

ENV_PIPELINE = "RECIPE_PIPELINE_ID"
TAG_PIPELINE = "recipe.pipeline_key"
_VERSIONED = ("torch", "torchvision", "dvc", "mlflow", "hydra-core", "pillow", "numpy")


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


def configure() -> str:
    """Point MLflow at the project's store (or ``MLFLOW_TRACKING_URI``) outside a stage, e.g. to
    load a logged model; returns the URI."""
    import mlflow

    uri = tracking_uri(project_root())
    mlflow.set_tracking_uri(uri)
    return uri


def pipeline_key() -> str:
    if os.environ.get(ENV_PIPELINE):
        return os.environ[ENV_PIPELINE]
    ancestor = _dvc_ancestor()
    if ancestor:
        return f"{socket.gethostname()}:{_boot_id()}:dvc:{ancestor}"
    return f"{socket.gethostname()}:{_boot_id()}:pid:{os.getpid()}:{time.time_ns()}"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return "noboot"


def _dvc_ancestor() -> str | None:
    """``"<pid>-<start time>"`` of the nearest ancestor process running dvc, if /proc tells."""
    pid = os.getppid()
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        fields = stat[stat.rfind(")") + 2 :].split()  # the command name may contain spaces
        ppid, start = int(fields[1]), fields[19]
        if any(os.path.basename(a) in (b"dvc", b"dvc.exe") for a in argv[:3]):
            return f"{pid}-{start}"
        pid = ppid
    return None


def _environment_tags() -> dict[str, str]:
    tags = {
        "host.python": platform.python_version(),
        "host.platform": platform.platform(),
        "host.cpu_count": str(os.cpu_count()),
    }
    for name in _VERSIONED:
        try:
            tags[f"version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return tags


def _experiment_id(mlflow: Any, name: str, location: str | None) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it between our look and our create
        return mlflow.get_experiment_by_name(name).experiment_id


def _parent_run_id(client: Any, experiment_id: str, key: str, tags: dict[str, str]) -> str:
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_PIPELINE}` = '{key}'", max_results=1
    )
    if found:
        return found[0].info.run_id
    name = tags.get("dvc_exp_name") or time.strftime("repro-%Y%m%d-%H%M%S")
    return client.create_run(experiment_id, run_name=name, tags={TAG_PIPELINE: key, **tags}).info.run_id


@contextmanager
def stage_run(stage: str, params: dict[str, Any], *, experiment: str) -> Iterator[Any]:
    """Open the stage's child run (under the execution's parent) and log its params.

    ``params`` maps the names of the params sections the stage uses to their values, as in
    params.yaml; they are logged flattened (``audit.near_dup_bits``) and their hash becomes
    the child's ``params_hash`` tag.
    """
    import mlflow  # imported here so that importing recipe.tracking stays cheap (mlflow takes ~1 s)

    root = project_root()
    # A team server decides where artifacts go; the embedded store keeps them beside mlflow.db.
    # (Read the variable before set_tracking_uri, which sets it itself.)
    location = None if os.environ.get("MLFLOW_TRACKING_URI") else (root / "mlartifacts").as_uri()
    mlflow.set_tracking_uri(tracking_uri(root))
    experiment_id = _experiment_id(mlflow, experiment, location)
    common = {"git_commit": git_commit() or "unknown", "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
              **_environment_tags()}
    parent_tags = {**common, "params_hash": section_hash(_all_params())}
    parent = _parent_run_id(mlflow.MlflowClient(), experiment_id, pipeline_key(), parent_tags)
    child_tags = {**common, "stage": stage, "params_hash": section_hash(params)}
    with mlflow.start_run(run_id=parent, experiment_id=experiment_id):
        with mlflow.start_run(run_name=stage, nested=True, experiment_id=experiment_id, tags=child_tags) as run:
            mlflow.log_params(flatten(params))
            yield run


def _all_params() -> dict[str, Any]:
    try:
        return read_params()
    except Exception:
        return {}
