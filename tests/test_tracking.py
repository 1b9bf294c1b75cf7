"""The MLflow spine: where the store is, how stages find their parent run, what they log."""
from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from recipe import tracking
from recipe.paths import outside_exp_copy, project_root


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
