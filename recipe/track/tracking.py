"""The MLflow spine: one parent run per pipeline execution, one child run per stage.

A pipeline execution is one ``dvc repro`` or one DVC experiment. DVC starts every stage as a
separate process, so the stages of one execution find their shared parent run by a key:

1. ``RECIPE_PIPELINE_ID`` when set (a caller that wants to group runs itself);
2. else the nearest ancestor ``dvc`` process, by boot id, pid and start time (Linux /proc):
   every stage of one ``dvc repro``, and of one queued or ``--temp`` experiment, shares it,
   and two experiments never do;
3. else the stage's own process: a stage run by hand gets a parent of its own.

The default store is SQLite plus an artifacts folder at the project root (see
:func:`recipe.core.paths.project_root`); ``MLFLOW_TRACKING_URI`` overrides it for a team server.
Whatever this module prints or writes names the store through :func:`mask_uri`, never with
its password; the search (:mod:`recipe.search`) masks its storage URL with it too.
"""
from __future__ import annotations

import json
import os
import platform
import re
import socket
import sys
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from recipe.core.config import flatten, read_params, section_hash
from recipe.core.paths import git_commit, project_root

ENV_PIPELINE = "RECIPE_PIPELINE_ID"
TAG_PIPELINE = "recipe.pipeline_key"
_VERSIONED = ("torch", "torchvision", "dvc", "mlflow", "hydra-core", "pillow", "numpy")


def tracking_uri(root: Path) -> str:
    """The store's URI as MLflow needs it, password included: print :func:`mask_uri` of it."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


# scheme://user:password@ (the password may hold unencoded / : ? #, as SQLAlchemy's URLs allow,
# but no @ nor blank), or scheme://user@ with no password
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/?#@\s]*)(?::(?P<password>[^@\s]*))?@")
# key=value where the key ends like a secret's name (password, api_key, access_token, X-Amz-Signature, ...)
_SECRET_PARAM = re.compile(r"(?<![\w.-])(?P<key>[\w.-]*?(?:password|passwd|pwd|token|secret|key|signature|sig"
                           r"|credentials?|auth)=)(?P<value>[^&;#\s]+)", re.IGNORECASE)


def mask_uri(text: str) -> str:
    """``text`` (a URI, or a message with URIs in it) with every secret masked as ``***``.

    The password of ``scheme://user:password@host`` (the user stays: ``user:***@``); the whole
    user of ``http(s)://user@host``, which is how a token is passed to a server (a database
    URL's lone user is a role name, and stays); and the value of every ``key=value`` whose key
    ends like a secret's (``password``, ``pwd``, ``token``, ``secret``, ``key``, ``sig``,
    ``signature``, ``credential``, ``auth``: ``?token=***&user=bob``). The rest is unchanged, and
    masking twice changes nothing. It errs on the side of masking: a URI without a password but
    with an ``@`` after a ``:`` (``http://h:5000/?mail=a@b``) loses what lies between them.
    """
    def userinfo(m: re.Match) -> str:
        if m["password"] is not None:
            return f"{m['head']}{m['user']}:***@"
        if m["user"] and m["head"].lower().rstrip(":/").split("+")[-1] in ("http", "https"):
            return f"{m['head']}***@"
        return m[0]

    return _SECRET_PARAM.sub(r"\g<key>***", _USERINFO.sub(userinfo, text))


def configure() -> str:
    """Point MLflow at the project's store (or ``MLFLOW_TRACKING_URI``) outside a stage, e.g. to
    load a logged model; returns the URI (password included: print :func:`mask_uri` of it)."""
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
    the child's ``params_hash`` tag. Yields the MLflow run, or None when nothing is logged
    (a DistributedDataParallel rank other than 0, or a store that could not be reached).

    Logging never stops training: the stage logs through :func:`log_metrics` and its siblings,
    and once a call to the store fails (a tracking server gone, a locked database) the stage
    goes on without MLflow, says so in one line, and writes what it could not log to
    ``outputs/unlogged/`` (:class:`Tracker`; when that folder cannot be written, one more line
    says so and those calls are dropped). An exception raised by the stage itself still
    propagates, and marks the run FAILED.
    """
    global _TRACKER
    tracker = _TRACKER = Tracker(stage, enabled=_is_rank_zero())
    if not tracker.enabled:
        try:
            yield None
        finally:
            _TRACKER = Tracker(stage, enabled=False)
        return
    _http_defaults()
    run = tracker.call("open the stage's run", _open_runs, stage, params, experiment)
    try:
        yield run
    except BaseException:
        if tracker.live:
            tracker.call("mark the run failed", _close_runs, "FAILED", bool(run))
        raise
    else:
        if tracker.live:  # after a failure the store is not asked again
            tracker.call("close the run", _close_runs, "FINISHED", bool(run))
    finally:
        tracker.report()


def _open_runs(stage: str, params: dict[str, Any], experiment: str) -> Any:
    import mlflow  # imported here so that importing recipe.track.tracking stays cheap (mlflow takes ~1 s)

    experiment_id = use_store(project_root(), experiment)
    parent = _parent_run_id(mlflow.MlflowClient(), experiment_id, pipeline_key(), _parent_tags())
    mlflow.start_run(run_id=parent, experiment_id=experiment_id)
    run = mlflow.start_run(run_name=stage, nested=True, experiment_id=experiment_id, tags=_child_tags(stage, params))
    mlflow.log_params(flatten(params))
    return run


def use_store(root: Path, experiment: str) -> str:
    """Point MLflow at the project's store (or the team server's) and return the experiment's id,
    created if new."""
    import mlflow

    # A team server decides where artifacts go; the embedded store keeps them beside mlflow.db.
    # (Read the variable before set_tracking_uri, which sets it itself.)
    location = None if os.environ.get("MLFLOW_TRACKING_URI") else (root / "mlartifacts").as_uri()
    mlflow.set_tracking_uri(tracking_uri(root))
    return _experiment_id(mlflow, experiment, location)


def start_top_run(root: Path, experiment: str, name: str, tags: dict[str, str]) -> Any:
    """A run of its own (no parent) in the project's store: what compare and search log."""
    import mlflow

    return mlflow.start_run(experiment_id=use_store(root, experiment), run_name=name, tags=tags)


def _close_runs(status: str, opened: bool) -> None:
    import mlflow

    if opened:
        mlflow.end_run(status)  # the stage's run
        mlflow.end_run("FINISHED")  # the parent: every stage leaves it finished


def _common_tags() -> dict[str, str]:
    return {"git_commit": git_commit() or "unknown", "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
            **_environment_tags()}


def _parent_tags() -> dict[str, str]:
    return {**_common_tags(), "params_hash": section_hash(_all_params())}


def _child_tags(stage: str, params: dict[str, Any]) -> dict[str, str]:
    return {**_common_tags(), "stage": stage, "params_hash": section_hash(params)}


def _is_rank_zero() -> bool:
    """Under torchrun only rank 0 logs (and writes files)."""
    return int(os.environ.get("RANK", "0")) == 0


def _http_defaults() -> None:
    """A tracking server that is gone should cost seconds, not MLflow's default minutes of
    retries (7 retries, backoff factor 2, 120 s timeout); the user's own settings win."""
    if str(os.environ.get("MLFLOW_TRACKING_URI", "")).startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")


class Tracker:
    """Calls to the MLflow store that cannot stop the stage.

    The first call that fails switches logging off for the rest of the stage: one line on
    stderr names the store (:func:`mask_uri`: no password), the call and the error (masked
    too); that call and every call after it are written, with their values (masked), to
    ``<root>/outputs/unlogged/<time>-<pid>-<stage>.jsonl`` instead. When that folder or file
    cannot be written (read-only, a file where the folder should be, a full disk), one more
    line on stderr names the folder and why, and the calls not logged from then on are dropped
    (counted in ``dropped``, and said by :meth:`report`); the stage still goes on. The stage's
    own outputs (metrics files, histories, pictures, checkpoints) are written as always.
    """

    def __init__(self, stage: str, *, enabled: bool = True):
        self.stage, self.enabled = stage, enabled
        self.error: str | None = None
        self.unlogged = 0  # calls not logged: recorded in the spool, or dropped
        self.dropped = 0  # calls not logged and not recorded either (the spool could not be written)
        self.spool: Path | None = None
        self.spool_error: str | None = None  # why the spool could not be written

    @property
    def live(self) -> bool:
        return self.enabled and self.error is None

    def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.enabled:
            return None
        if self.error is not None:
            self._record(what, args, kwargs)
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure of the store; the stage must go on
            # masked before it is cut: a cut URI could keep its password and lose the @ that shows it
            self.error = mask_uri(" ".join(f"{type(exc).__name__}: {exc}".split()))[:300]
            self.spool = self._spool_path()
            print(f"warning: MLflow ({mask_uri(tracking_uri(project_root()))}): could not {what} ({self.error}); "
                  f"{self.stage} goes on without logging, its outputs are written as usual and what was "
                  f"not logged goes to {self.spool}", file=sys.stderr, flush=True)
            self._record(what, args, kwargs)
            return None

    def _spool_path(self) -> Path:
        folder = project_root() / "outputs" / "unlogged"
        return folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{self.stage}.jsonl"

    def _record(self, what: str, args: tuple, kwargs: dict) -> None:
        self.unlogged += 1
        if self.spool_error is None:
            if self.spool is None:
                self.spool = self._spool_path()
            entry = {"stage": self.stage, "call": what, "time": time.time(),
                     "args": [_plain(a) for a in args], "kwargs": {k: _plain(v) for k, v in kwargs.items()}}
            try:
                self.spool.parent.mkdir(parents=True, exist_ok=True)
                with self.spool.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(entry, default=str) + "\n")
                return
            except OSError as exc:
                why = exc.strerror or str(exc)
                if isinstance(exc, (FileExistsError, NotADirectoryError)):
                    why = "a file stands where a folder should be"
                self.spool_error = " ".join(f"{type(exc).__name__}: {why}".split())[:200]
                print(f"warning: {self.stage}: cannot write {self.spool.parent} ({self.spool_error}); the MLflow "
                      f"calls not logged are dropped from now on, the stage goes on", file=sys.stderr, flush=True)
        self.dropped += 1

    def report(self) -> None:
        if self.error is None:
            return
        kept = self.unlogged - self.dropped
        if not self.dropped:
            where = f"the record is {self.spool}"
        else:
            where = (f"{self.dropped} dropped, not recorded ({self.spool.parent}: {self.spool_error})"
                     + (f"; the {kept} other(s) are recorded in {self.spool}" if kept else ""))
        print(f"warning: {self.stage}: {self.unlogged} MLflow call(s) not logged ({self.error}); {where}",
              file=sys.stderr, flush=True)


def _plain(value: Any) -> Any:
    """``value`` as JSON can hold it, for the spool; no string in it keeps a secret (:func:`mask_uri`)."""
    if isinstance(value, str):
        return mask_uri(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(Path(value).resolve())
    return mask_uri(repr(value))[:200]


_TRACKER = Tracker("-", enabled=False)  # outside a stage_run nothing is logged


# What MLflow accepts in a metric's name (mlflow.utils.validation): word characters, - . space : /
_NOT_IN_A_NAME = re.compile(r"[^\w\-. :/]")


def metric_name(key: str) -> str:
    """``key`` as MLflow accepts a metric's name: each other character (an image mode's ``;`` in
    ``modes.I;16``, a class name's ``+``) replaced by ``_``."""
    return _NOT_IN_A_NAME.sub("_", key)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    import mlflow

    _TRACKER.call("log metrics", mlflow.log_metrics, {metric_name(k): v for k, v in metrics.items()}, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    import mlflow

    _TRACKER.call("log an artifact", mlflow.log_artifact, str(path), artifact_path)


def log_artifacts(folder: str | Path, artifact_path: str | None = None) -> None:
    import mlflow

    _TRACKER.call("log artifacts", mlflow.log_artifacts, str(folder), artifact_path)


def log_table(data: dict, artifact_file: str) -> None:
    import mlflow

    _TRACKER.call("log a table", mlflow.log_table, data, artifact_file)


def set_tag(key: str, value: str) -> None:
    import mlflow

    _TRACKER.call("set a tag", mlflow.set_tag, key, value)


def guarded(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Any other MLflow call (e.g. logging a model) under the same rule; None when not logged."""
    return _TRACKER.call(what, fn, *args, **kwargs)


@contextmanager
def tracked(name: str) -> Iterator[Tracker]:
    """Outside a stage (e.g. the Bayesian search's own run): inside the block, :func:`log_metrics`,
    :func:`log_artifact`, :func:`guarded` and their siblings go through a :class:`Tracker` named
    ``name``, under a stage's rule (the first failure warns once, the rest is kept in
    ``outputs/unlogged/``, or dropped with a warning when that cannot be written), reported when
    the block ends. The caller opens and ends its own run."""
    global _TRACKER
    previous, _TRACKER = _TRACKER, Tracker(name, enabled=_is_rank_zero())
    if _TRACKER.enabled:
        _http_defaults()
    try:
        yield _TRACKER
    finally:
        _TRACKER.report()
        _TRACKER = previous


TAG_REUSED = "recipe.reused"
REUSED_NOTE = ("DVC did not rerun this stage in this execution: its outputs are unchanged or were restored "
               "from DVC's run cache. The params and metrics here are those of the outputs it reused.")


def record_execution(stages: list[dict[str, Any]], params: dict[str, Any], *, experiment: str,
                     metrics: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Complete the execution's parent run once its last stage is done (the ``record`` stage).

    ``stages`` lists the DAG's stages in order, each ``{"name", "params"}`` (the params keys it
    reads, as in dvc.yaml); ``metrics`` maps a stage name to its metrics, read from its metrics
    files. A stage with no child run under the parent was not run in this execution (DVC found
    it unchanged, or restored it from its run cache): it gets a child run tagged
    ``recipe.reused`` with its params and metrics, so every execution shows every stage. The
    parent gets every param (flattened) and every stage's numbers as ``<stage>.<key>``, so two
    executions compare side by side in the UI. Returns ``{"parent", "ran", "reused"}``, or None
    when nothing could be logged (reported as for a stage).
    """
    tracker = Tracker("record", enabled=_is_rank_zero())
    if not tracker.enabled:
        return None
    _http_defaults()
    result = tracker.call("record the execution", _record, stages, params, experiment, metrics)
    tracker.report()
    return result


def _record(stages: list[dict[str, Any]], params: dict[str, Any], experiment: str,
            metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    experiment_id = use_store(project_root(), experiment)
    client = mlflow.MlflowClient()
    parent = _parent_run_id(client, experiment_id, pipeline_key(), _parent_tags())
    children = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    ran = {r.info.run_name for r in children}
    now = int(time.time() * 1000)
    reused = []
    for stage in stages:
        name = stage["name"]
        if name in ran:
            continue
        used = _select(params, stage["params"])
        tags = {**_child_tags(name, used), "mlflow.parentRunId": parent, TAG_REUSED: "true",
                "mlflow.note.content": REUSED_NOTE}
        run = client.create_run(experiment_id, run_name=name, tags=tags)
        client.log_batch(run.info.run_id,
                         metrics=[Metric(k, v, now, 0) for k, v in _numbers(metrics.get(name, {})).items()],
                         params=[Param(k, str(v)) for k, v in flatten(used).items()])
        client.set_terminated(run.info.run_id, "FINISHED")
        reused.append(name)
    summary = {f"{name}.{k}": v for name in (s["name"] for s in stages)
               for k, v in _numbers(metrics.get(name, {})).items()}
    client.log_batch(parent, metrics=[Metric(k, v, now, 0) for k, v in summary.items()],
                     params=[Param(k, str(v)) for k, v in flatten(params).items()],
                     tags=[RunTag("recipe.stages_reused", ",".join(reused) or "none")])
    client.set_terminated(parent, "FINISHED")
    return {"parent": parent, "ran": [s["name"] for s in stages if s["name"] in ran], "reused": reused}


def _select(params: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """The part of ``params`` named by dvc.yaml-style keys (``seed``, ``finetune.lr_mult``), nested."""
    out: dict[str, Any] = {}
    for key in keys:
        node: Any = params
        parts = key.split(".")
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            target = out
            for part in parts[:-1]:
                target = target.setdefault(part, {})
            target[parts[-1]] = node
    return out


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {metric_name(k): float(v) for k, v in flatten(metrics).items()
            if isinstance(v, (int, float)) and (v == v) and abs(v) != float("inf")}


def _all_params() -> dict[str, Any]:
    try:
        return read_params()
    except Exception:
        return {}
