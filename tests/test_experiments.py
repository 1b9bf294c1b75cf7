"""Sweeps through DVC's queue: two experiments at once (`dvc queue start -j 2`) land in the
project's one SQLite store, each under its own parent run, with every stage present: the ones
DVC restored from its run cache as child runs tagged recipe.reused."""
from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cmd, store_runs

pytestmark = pytest.mark.slow

STAGES = {"ingest", "audit", "split", "cv_split", "cv", "baseline", "lr_find", "train_head", "finetune", "resize", "select", "evaluate",
          "export"}


def dvc(*args: str, cwd: Path) -> str:
    return run_cmd(sys.executable, "-m", "dvc", *args, cwd=cwd)


def wait_for_queue(proj: Path, timeout: float = 1500) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = dvc("queue", "status", cwd=proj)
        if not any(word in status for word in ("Queued", "Running")):
            return status
        time.sleep(3)
    raise AssertionError(f"queue still busy after {timeout} s:\n{status}")


# A setting of the last stage (export's parity tolerance): each experiment reruns export alone,
# every other stage is checked out or restored, so the test pays for DVC, MLflow and the queue, not
# for training (what the stages train is tested elsewhere).
SETTING = "export.tolerance"
VALUES = (("q-hi", "0.01"), ("q-lo", "0.001"))


def test_two_queued_experiments_in_parallel_share_one_store(tiny_project, tmp_path):
    proj = tmp_path / "proj"  # a copy: the session's tiny project is shared, and this test commits experiments
    shutil.copytree(tiny_project, proj, symlinks=True)
    before = {r.info.run_id for r in store_runs(proj)}
    for name, value in VALUES:
        dvc("exp", "run", "--queue", "-n", name, "-S", f"{SETTING}={value}", cwd=proj)
    dvc("queue", "start", "-j", "2", cwd=proj)
    status = wait_for_queue(proj)
    assert status.count("Success") == 2, status
    for name in ("q-hi", "q-lo"):
        log = dvc("queue", "logs", name, cwd=proj)
        assert "database is locked" not in log and "warning: MLflow" not in log, log
        # not rerun: DVC checks out the committed lock's outputs, or restores them from its run cache
        assert re.search(r"Stage 'audit' (didn't change, skipping|is cached - skipping run)", log), log
        assert "Running stage 'audit'" not in log

    new = [r for r in store_runs(proj) if r.info.run_id not in before]
    parents = {r.data.tags["dvc_exp_name"]: r for r in new if "mlflow.parentRunId" not in r.data.tags}
    assert set(parents) == {"q-hi", "q-lo"}
    for name, value in VALUES:
        parent = parents[name]
        children = [r for r in new if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.info.run_name for r in children) == sorted(STAGES)  # every stage once, none lost
        assert all(r.info.status == "FINISHED" for r in [parent, *children])
        by_name = {r.info.run_name: r for r in children}
        assert "recipe.reused" not in by_name["export"].data.tags  # it ran: its params changed
        assert by_name["export"].data.params[SETTING] == value
        reused = {n for n, r in by_name.items() if r.data.tags.get("recipe.reused") == "true"}
        assert {"audit", "split", "baseline", "lr_find", "train_head", "finetune", "resize", "evaluate"} <= reused
        assert reused == set(parent.data.tags["recipe.stages_reused"].split(","))
        # a reused stage still carries its numbers, and the parent every stage's
        audit = json.loads((proj / "outputs/audit/report.json").read_text())
        assert by_name["audit"].data.metrics["kept"] == audit["kept"]
        assert parent.data.params[SETTING] == value
        assert "evaluate.test_chosen.accuracy" in parent.data.metrics
    # The same comparison on the command line: the metrics and histories are committed with each
    # experiment (cache: false, not git-ignored), so DVC reads them for any experiment.
    shown = {name: metrics for name, metrics in exp_metrics(json.loads(dvc("exp", "show", "--json", cwd=proj)))}
    for name, value in VALUES:
        export = shown[name]["outputs/export/metrics.json"]["data"]
        assert export["tolerance"] == float(value)
        assert "test_chosen" in shown[name]["outputs/evaluate/metrics.json"]["data"]
    diff = json.loads(dvc("metrics", "diff", "q-hi", "q-lo", "--json", cwd=proj))
    assert diff["outputs/export/metrics.json"]["tolerance"] == {"old": 0.01, "new": 0.001, "diff": pytest.approx(-0.009)}
    plots = dvc("plots", "diff", "q-hi", "q-lo", "--json", cwd=proj)
    assert "outputs/finetune/history.csv" in plots and '"q-hi"' in plots and '"q-lo"' in plots


def exp_metrics(shown: list):
    """(experiment name, its metrics) pairs from `dvc exp show --json`."""
    for rev in shown:
        for exp in rev.get("experiments") or []:
            for r in exp.get("revs") or []:
                if r.get("name"):
                    yield r["name"], (r.get("data") or {}).get("metrics") or {}
