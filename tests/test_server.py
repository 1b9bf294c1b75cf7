"""A team tracking server: the pipeline logs to `mlflow server` (SQLite backend, proxied
artifacts) on 127.0.0.1 with only MLFLOW_TRACKING_URI set; when the server goes away mid-run
the stages finish, write their outputs and say what they could not log."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from test_tracking import free_port

from conftest import store_runs, subprocess_env

pytestmark = pytest.mark.slow


class Server:
    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{root}/server.db",
             "--artifacts-destination", str(root / "artifacts")],
            env=subprocess_env(), stdout=(root / "server.log").open("w"), stderr=subprocess.STDOUT,
            start_new_session=True)  # its own process group: the server's workers die with it
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{self.uri}/health", timeout=2).status == 200:
                    return
            except OSError:
                time.sleep(0.5)
            if self.proc.poll() is not None:
                break
        self.stop()
        raise AssertionError(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")

    def stop(self) -> None:
        """Kill the server and its workers (a server that goes away, not one shut down cleanly)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "server")
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def proj(tiny_project, tmp_path) -> Path:
    """This test's own copy of the session's tiny project (outputs, DVC cache, git and the local
    MLflow store included): `dvc exp run` changes the workspace it runs in, and the session's
    project is shared read-only."""
    dest = tmp_path / "proj"
    shutil.copytree(tiny_project, dest, symlinks=True)
    return dest


def exp_run(proj: Path, name: str, *overrides: str, uri: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dvc", "exp", "run", "-n", name, *(a for o in overrides for a in ("-S", o))]
    return subprocess.Popen(cmd, cwd=proj, env=subprocess_env(MLFLOW_TRACKING_URI=uri),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_the_pipeline_logs_to_a_server_with_only_the_env_variable(proj, server):
    local_before = len(store_runs(proj))
    proc = exp_run(proj, "on-server", "finetune.epochs=2", uri=server.uri)
    out, _ = proc.communicate(timeout=1200)
    assert proc.returncode == 0, out
    client = mlflow.MlflowClient(server.uri)
    exp = client.get_experiment_by_name("finetune-recipe")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.data.tags["dvc_exp_name"] == "on-server"
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert {"ingest", "audit", "finetune", "resize", "evaluate"} <= set(children)
    finetune = children["finetune"]
    assert finetune.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
    assert "history.csv" in {a.path for a in client.list_artifacts(finetune.info.run_id)}
    assert list((server.root / "artifacts").rglob("history.csv"))  # and stored where the server keeps them
    steps = [m.step for m in client.get_metric_history(finetune.info.run_id, "valid_loss")]
    assert steps == list(range(len(steps))) and steps
    assert len(store_runs(proj)) == local_before  # nothing went to the local store


def test_a_server_that_goes_away_mid_run_loses_no_output(proj, server):
    metrics = proj / "outputs/finetune/metrics.json"
    resume = proj / "outputs/finetune/resume"
    before = metrics.stat().st_mtime
    proc = exp_run(proj, "server-gone", "finetune.epochs=3", "finetune.lr=0.002", uri=server.uri)
    deadline = time.time() + 900
    while not resume.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    server.stop()  # once finetune has trained an epoch
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{server.uri}/health", timeout=2)
    out, _ = proc.communicate(timeout=1200)
    assert proc.returncode == 0, out
    history = pd.read_csv(proj / "outputs/finetune/history.csv")
    assert metrics.stat().st_mtime > before and json.loads(metrics.read_text())["epochs"] == len(history) >= 1
    split = pd.read_csv(proj / "outputs/split/split.csv")
    assert json.loads((proj / "outputs/evaluate/metrics.json").read_text())["test"]["images"] == \
        int((split["split"] == "test").sum())  # every test image of the split the run ended with
    assert f"warning: MLflow ({server.uri}): could not" in out and "goes on without logging" in out
    assert "MLflow call(s) not logged" in out
    spools = list((proj / "outputs/unlogged").glob("*.jsonl"))
    calls = [json.loads(line) for f in spools for line in f.read_text().splitlines()]
    assert {"finetune", "evaluate"} <= {c["stage"] for c in calls}
    assert any(c["call"] == "log metrics" for c in calls)
