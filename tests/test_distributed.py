"""DistributedDataParallel with the gloo backend on the CPU: two processes under torchrun train
to the same weights as one process with the same global batch (a toy fit(), and the tiny
project's finetune stage with ``lr: auto``, whose range test rank 0 alone runs)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO, copy_project, run_cmd, subprocess_env
from recipe.core import distributed
from recipe.data.loader import Batches

SCRIPT = REPO / "tests" / "scripts" / "ddp_fit.py"


def run_fit(out, nproc: int) -> dict:
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    # PYTHONPATH: the script imports recipe whether or not the project is pip-installed
    proc = subprocess.run([sys.executable, *launcher, str(SCRIPT), str(out)], cwd=REPO, env=subprocess_env(PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return torch.load(out, weights_only=True)


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    one = run_fit(tmp_path / "one.pt", 1)
    two = run_fit(tmp_path / "two.pt", 2)
    assert one["world"] == 1 and one["shard"] is None
    assert two["world"] == 2 and two["shard"] == (0, 2)  # rank 0 trained on its slice of each batch
    # Tolerance: float summation order (gloo's all-reduce) only; measured 3e-8 on the weights.
    for key, weight in one["model"].items():
        torch.testing.assert_close(two["model"][key], weight, rtol=0, atol=1e-6)
    for a, b in zip(one["history"], two["history"], strict=True):
        for col in ("train_loss", "valid_loss", "accuracy"):
            assert b[col] == pytest.approx(a[col], abs=1e-6), col


def test_rank_0_alone_runs_on_main_and_every_rank_gets_its_result_or_its_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(REPO / "tests" / "scripts" / "ddp_on_main.py"), str(tmp_path)], cwd=REPO,
                          env=subprocess_env(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=120)  # a rank left waiting in the broadcast would hang here
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    assert [s["got"] for s in seen] == [{"rank": 0, "lr": 0.1}] * 2
    assert [s["calls"] for s in seen] == [[0], []]
    assert [s["error"] for s in seen] == ["the range test diverged"] * 2


def test_each_rank_keeps_its_slice_of_the_same_global_batch():
    x = torch.arange(10, dtype=torch.float32)[:, None]
    y = torch.arange(10)
    whole = Batches(x, y, batch_size=5, shuffle=True, seed=3, device=torch.device("cpu"))
    ranks = [Batches(x, y, batch_size=5, shuffle=True, seed=3, device=torch.device("cpu"), shard=(r, 2)) for r in (0, 1)]
    for (_, ya), (_, y0), (_, y1) in zip(whole.epoch(1), ranks[0].epoch(1), ranks[1].epoch(1), strict=True):
        assert torch.equal(torch.cat([y0, y1]), ya) and len(y0) == 3 and len(y1) == 2
        assert ranks[0].global_n == ranks[1].global_n == 5


def test_outside_torchrun_nothing_is_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert distributed.world_size() == 1 and distributed.is_main() and distributed.shard() is None
    assert distributed.init(torch.device("cpu")) == torch.device("cpu")
    assert distributed.sum_all(2.0, 3.0) == [2.0, 3.0]
    assert distributed.on_main(lambda: 7) == 7
    distributed.launch(1, "stages.finetune")  # nproc 1: returns, runs here


@pytest.fixture(scope="module")
def finetune_one_and_two(tmp_path_factory) -> dict:
    """The tiny project's finetune stage with ``lr: auto``, run by DVC once with train.nproc 1 and
    once with 2 (gloo), on the same train_head checkpoint.

    resnet18 from scratch without head dropout: each rank draws its own dropout masks for its
    slice (EfficientNet-Lite0 also has drop-connect in its blocks), which no tolerance for float
    summation order covers. keep=last: the final weights are the trained ones, not the start's.
    One thread per process keeps the CPU use modest (2 cores) and the sums in one order."""
    from recipe.core.compose import compose

    proj = copy_project(tmp_path_factory.mktemp("ddp_finetune"))
    config = proj / "conf/config.yaml"
    config.write_text(config.read_text().replace("- experiment: null", "- experiment: tiny"))
    overrides = ["finetune.lr=auto", "model=resnet18", "model.weights=null", "model.head.dropout=0.0",
                 "train.keep=last"]
    env = subprocess_env(OMP_NUM_THREADS="1")
    runs = {}
    for nproc in (1, 2):
        compose(proj, [*overrides, f"train.nproc={nproc}"], proj / "params.yaml")
        # nproc 1 builds the pipeline up to finetune; nproc 2 reruns finetune alone on the same checkpoint
        single = ["--single-item", "--force"] if nproc > 1 else []
        out = run_cmd(sys.executable, "-m", "dvc", "repro", *single, "finetune", cwd=proj, env=env, timeout=600)
        stage = shutil.move(proj / "outputs/finetune", proj / f"finetune_{nproc}")  # the next run starts empty
        runs[nproc] = {"out": out, "dir": stage, "metrics": json.loads((stage / "metrics.json").read_text()),
                       "history": (stage / "history.csv").read_text().splitlines()}
    return runs


@pytest.mark.slow
def test_finetune_with_lr_auto_on_two_gloo_processes_matches_one_process(finetune_one_and_two):
    one, two = finetune_one_and_two[1], finetune_one_and_two[2]
    assert "processes" not in one["metrics"] and two["metrics"]["processes"] == 2
    # One range test, rank 0's on the whole global batches: one process's curve and rate, written once
    assert two["out"].count("points; suggestions") == 1
    assert two["metrics"]["lr"] == one["metrics"]["lr"] and two["metrics"]["lrs"] == one["metrics"]["lrs"]
    for name in ("curve.csv", "suggestion.json"):
        assert (two["dir"] / "lr_find" / name).read_text() == (one["dir"] / "lr_find" / name).read_text(), name
    # the model and its one SGDR snapshot (tiny: 1 epoch, one cycle), written by rank 0; no resume state left
    assert sorted(p.relative_to(two["dir"]).as_posix() for p in two["dir"].rglob("*.pt")) == ["model.pt",
                                                                                          "snapshots/epoch_0.pt"]
    # Tolerance: float summation order only (gloo's all-reduce, each rank's share of the batch).
    # Measured: weights 4e-7 apart (finetune moves them 9e-4), train loss 3e-8, valid metrics equal.
    weights = [torch.load(run["dir"] / "model.pt", weights_only=True)["model"] for run in (one, two)]
    for key, weight in weights[0].items():
        torch.testing.assert_close(weights[1][key], weight, rtol=0, atol=2e-6)
    for key in ("valid_loss", "valid_accuracy"):
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], abs=1e-6), key
    rows = [(a.split(","), b.split(",")) for a, b in zip(one["history"], two["history"], strict=True)]
    for a, b in rows[1:]:  # train_loss, valid_loss, accuracy, lr
        assert [float(v) for v in b[2:6]] == pytest.approx([float(v) for v in a[2:6]], abs=1e-6)
