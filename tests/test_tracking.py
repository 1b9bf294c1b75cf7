"""The MLflow spine: where the store is, how stages find their parent run, what they log."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from conftest import REPO, subprocess_env
from recipe.core.paths import outside_exp_copy, project_root
from recipe.track import tracking


def test_experiment_copies_log_to_the_real_root():
    assert outside_exp_copy(Path("/p/.dvc/tmp/exps/tmpab12/sub")) == Path("/p")
    assert outside_exp_copy(Path("/p/work")) == Path("/p/work")


def test_dvc_root_wins_over_git(monkeypatch, tmp_path):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / ".dvc" / "tmp" / "exps" / "tmpx"))
    assert project_root() == tmp_path.resolve()


def test_tracking_uri_defaults_to_sqlite_at_root_and_env_overrides(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5005")
    assert tracking.tracking_uri(tmp_path) == "http://127.0.0.1:5005"


@pytest.fixture
def store(monkeypatch, tmp_path):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("seed: 1\naudit: {near_dup_bits: 4}\n")
    yield tmp_path
    mlflow.set_tracking_uri(None)


def runs(root: Path):
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    return mlflow.search_runs(experiment_names=["t"], output_format="list")


def test_stages_of_one_execution_share_a_parent_and_two_executions_do_not(store, monkeypatch):
    monkeypatch.setenv(tracking.ENV_PIPELINE, "exec-1")
    for stage in ("ingest", "audit"):
        with tracking.stage_run(stage, {"audit": {"near_dup_bits": 4}, "seed": 1}, experiment="t"):
            mlflow.log_metric("m", 1.0)
    monkeypatch.setenv(tracking.ENV_PIPELINE, "exec-2")
    with tracking.stage_run("split", {"split": {"seed": 1}}, experiment="t"):
        pass
    all_runs = runs(store)
    parents = [r for r in all_runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in all_runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 2 and len(children) == 3
    by_name = {r.info.run_name: r for r in children}
    assert by_name["ingest"].data.tags["mlflow.parentRunId"] == by_name["audit"].data.tags["mlflow.parentRunId"]
    assert by_name["split"].data.tags["mlflow.parentRunId"] != by_name["audit"].data.tags["mlflow.parentRunId"]
    audit = by_name["audit"]
    assert audit.data.params == {"audit.near_dup_bits": "4", "seed": "1"}
    assert audit.data.tags["stage"] == "audit" and len(audit.data.tags["params_hash"]) == 12
    assert {"git_commit", "dvc_exp_name", "version.mlflow", "host.cpu_count"} <= set(audit.data.tags)
    assert audit.data.metrics == {"m": 1.0}
    assert mlflow.get_experiment_by_name("t").artifact_location == (store / "mlartifacts").as_uri()
    assert all(r.info.status == "FINISHED" for r in all_runs)


def test_a_failing_stage_marks_its_run_failed(store, monkeypatch):
    monkeypatch.setenv(tracking.ENV_PIPELINE, "exec-f")
    with pytest.raises(RuntimeError):
        with tracking.stage_run("audit", {"seed": 1}, experiment="t"):
            raise RuntimeError("boom")
    (child,) = [r for r in runs(store) if r.info.run_name == "audit"]
    assert child.info.status == "FAILED"


def test_key_comes_from_the_nearest_dvc_ancestor(monkeypatch):
    monkeypatch.delenv(tracking.ENV_PIPELINE, raising=False)
    # Under pytest there is no dvc ancestor: the key is per process and per call.
    assert tracking._dvc_ancestor() is None
    assert ":pid:" in tracking.pipeline_key()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_does_not_stop_the_stage(store, monkeypatch, capsys):
    """Nothing listens on the port: the stage's body runs to the end, one warning names the
    store and the error, and what was not logged is kept, with its values, in outputs/unlogged."""
    import json

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(key, raising=False)
    done = []
    with tracking.stage_run("finetune", {"seed": 1}, experiment="t") as run:
        tracking.log_metrics({"valid_loss": 0.5}, step=3)
        tracking.log_artifact(store / "params.yaml", "plots")
        done.append(True)
    assert run is None and done == [True]
    err = capsys.readouterr().err
    assert "warning: MLflow (http://127.0.0.1:" in err and "finetune goes on without logging" in err
    assert "3 MLflow call(s) not logged" in err  # opening the run, the metrics, the artifact
    (spool,) = (store / "outputs" / "unlogged").glob("*-finetune.jsonl")
    entries = [json.loads(line) for line in spool.read_text().splitlines()]
    assert [e["call"] for e in entries] == ["open the stage's run", "log metrics", "log an artifact"]
    assert entries[1]["args"] == [{"valid_loss": 0.5}] and entries[1]["kwargs"] == {"step": 3}
    assert entries[2]["args"][0] == str((store / "params.yaml").resolve())


def test_the_stage_own_error_still_propagates_when_the_store_is_gone(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.stage_run("audit", {"seed": 1}, experiment="t"):
            raise RuntimeError("boom")


def test_ranks_other_than_zero_log_nothing(store, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv(tracking.ENV_PIPELINE, "exec-r")
    with tracking.stage_run("finetune", {"seed": 1}, experiment="t") as run:
        tracking.log_metrics({"x": 1.0})
    assert run is None
    assert not (store / "mlflow.db").exists() and not (store / "outputs").exists()


def test_record_adds_reused_stages_and_fills_the_parent(store, monkeypatch):
    monkeypatch.setenv(tracking.ENV_PIPELINE, "exec-rec")
    (store / "params.yaml").write_text("seed: 1\naudit: {near_dup_bits: 4}\nfinetune: {lr: 0.01, lr_mult: 9}\n")
    with tracking.stage_run("finetune", {"finetune": {"lr": 0.01}}, experiment="t"):
        pass
    stages = [{"name": "audit", "params": ["audit", "seed"]}, {"name": "finetune", "params": ["finetune.lr"]}]
    params = {"seed": 1, "audit": {"near_dup_bits": 4}, "finetune": {"lr": 0.01, "lr_mult": 9}}
    # an image mode's ";" is no character of an MLflow metric name: it once failed record's batch,
    # and every reused stage after it went unlogged
    metrics = {"audit": {"kept": 29, "issues": {"zero_byte": 1}, "mode": "L", "modes": {"I;16": 1}},
               "finetune": {"valid_loss": 0.25}}
    done = tracking.record_execution(stages, params, experiment="t", metrics=metrics)
    assert done["ran"] == ["finetune"] and done["reused"] == ["audit"]
    all_runs = runs(store)
    (parent,) = [r for r in all_runs if "mlflow.parentRunId" not in r.data.tags]
    audit = next(r for r in all_runs if r.info.run_name == "audit")
    assert audit.data.tags["mlflow.parentRunId"] == parent.info.run_id == done["parent"]
    assert audit.data.tags[tracking.TAG_REUSED] == "true" and audit.info.status == "FINISHED"
    assert audit.data.params == {"audit.near_dup_bits": "4", "seed": "1"}
    assert audit.data.metrics == {"kept": 29.0, "issues.zero_byte": 1.0, "modes.I_16": 1.0}
    finetune = next(r for r in all_runs if r.info.run_name == "finetune")
    assert tracking.TAG_REUSED not in finetune.data.tags
    assert parent.data.params["finetune.lr_mult"] == "9"
    assert parent.data.metrics == {"audit.kept": 29.0, "audit.issues.zero_byte": 1.0, "audit.modes.I_16": 1.0,
                                   "finetune.valid_loss": 0.25}
    assert parent.data.tags["recipe.stages_reused"] == "audit"


def test_select_takes_dvc_style_keys():
    params = {"seed": 1, "finetune": {"lr": 0.1, "lr_mult": 9}, "train": {"image_size": 64}}
    assert tracking._select(params, ["seed", "finetune.lr_mult", "missing.key"]) == {"seed": 1, "finetune": {"lr_mult": 9}}


@pytest.mark.parametrize("uri, masked", [
    ("http://user:s3cret@127.0.0.1:9/", "http://user:***@127.0.0.1:9/"),
    ("https://alice:s3cret@mlflow.example.com:443/api?x=1", "https://alice:***@mlflow.example.com:443/api?x=1"),
    ("postgresql+psycopg2://optuna:s3cret@db:5432/optuna", "postgresql+psycopg2://optuna:***@db:5432/optuna"),
    ("mysql://root:p/ss:w%40rd?s3cret@db/optuna", "mysql://root:***@db/optuna"),  # unencoded / : ? in it
    ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
    ("https://s3cret@mlflow.example.com/", "https://***@mlflow.example.com/"),  # a bare token as the user
    ("postgresql://optuna@db/optuna", "postgresql://optuna@db/optuna"),  # a database role, no secret
    ("http://127.0.0.1:5000/?token=s3cret&user=bob", "http://127.0.0.1:5000/?token=***&user=bob"),
    ("postgresql://db/optuna?user=bob&password=s3cret", "postgresql://db/optuna?user=bob&password=***"),
    ("https://h/x?X-Amz-Signature=s3cret;api_key=s3cret#f", "https://h/x?X-Amz-Signature=***;api_key=***#f"),
    ("sqlite:////work/p/mlflow.db", "sqlite:////work/p/mlflow.db"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("API request to http://u:s3cret@h:9/api/2.0/x failed (url: /api/2.0/x) then postgresql://v:s3cret@db/o",
     "API request to http://u:***@h:9/api/2.0/x failed (url: /api/2.0/x) then postgresql://v:***@db/o"),
])
def test_mask_uri_hides_passwords_and_secret_query_values(uri, masked):
    assert tracking.mask_uri(uri) == masked
    assert tracking.mask_uri(masked) == masked  # masking twice changes nothing


STAGE = """
from recipe.track import tracking
with tracking.stage_run("finetune", {"seed": 1}, experiment="t") as run:
    tracking.log_metrics({"valid_loss": 0.5}, step=1)
    tracking.set_tag("source", "http://user:s3cret@127.0.0.1:9/?token=s3cret")
    print("body done, run", run, flush=True)
"""


def test_a_password_in_the_tracking_uri_is_never_printed_nor_spooled(store):
    """A stage, as DVC runs it, against a server that is not there (port 9: nothing listens):
    the warnings name the store without its password, and the record in outputs/unlogged/
    keeps no password either."""
    env = subprocess_env(DVC_ROOT=str(store), PYTHONPATH=str(REPO), RECIPE_PIPELINE_ID="exec-secret",
                         MLFLOW_TRACKING_URI="http://user:s3cret@127.0.0.1:9/",
                         MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="0",
                         MLFLOW_HTTP_REQUEST_TIMEOUT="2")
    proc = subprocess.run([sys.executable, "-c", STAGE], cwd=store, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "body done, run None" in proc.stdout
    assert "warning: MLflow (http://user:***@127.0.0.1:9/)" in proc.stderr
    assert "3 MLflow call(s) not logged" in proc.stderr
    assert "s3cret" not in proc.stdout + proc.stderr
    (spool,) = (store / "outputs" / "unlogged").glob("*-finetune.jsonl")
    text = spool.read_text()
    assert "s3cret" not in text
    assert [json.loads(line)["call"] for line in text.splitlines()] == ["open the stage's run", "log metrics",
                                                                         "set a tag"]


def test_an_unwritable_unlogged_folder_does_not_stop_the_stage(store, monkeypatch, capsys):
    """A file where outputs/unlogged/ should be: one warning names the folder and why, the calls
    are counted as dropped, and the stage runs to the end."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    (store / "outputs").mkdir()
    (store / "outputs" / "unlogged").write_text("not a folder\n")
    done = []
    with tracking.stage_run("finetune", {"seed": 1}, experiment="t") as run:
        tracking.log_metrics({"valid_loss": 0.5}, step=3)
        tracking.log_metrics({"valid_loss": 0.4}, step=4)
        done.append(True)
    assert run is None and done == [True]
    err = capsys.readouterr().err
    folder = store / "outputs" / "unlogged"
    (line,) = [ln for ln in err.splitlines() if "cannot write" in ln]
    assert str(folder) in line
    assert "3 MLflow call(s) not logged" in err and "3 dropped" in err
    assert (store / "outputs" / "unlogged").read_text() == "not a folder\n"
