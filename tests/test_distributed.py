"""DistributedDataParallel with the gloo backend on the CPU: two processes under torchrun train
to the same weights as one process with the same global batch."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from recipe import distributed
from recipe.data.loader import Batches

from conftest import REPO, subprocess_env

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


def test_each_rank_keeps_its_slice_of_the_same_global_batch():
    x = torch.arange(10, dtype=torch.float32)[:, None]
    y = torch.arange(10)
    whole = Batches(x, y, batch_size=5, shuffle=True, seed=3, device=torch.device("cpu"))
    ranks = [Batches(x, y, batch_size=5, shuffle=True, seed=3, device=torch.device("cpu"), shard=(r, 2)) for r in (0, 1)]
    for (xa, ya), (x0, y0), (x1, y1) in zip(whole.epoch(1), ranks[0].epoch(1), ranks[1].epoch(1), strict=True):
        assert torch.equal(torch.cat([y0, y1]), ya) and len(y0) == 3 and len(y1) == 2
        assert ranks[0].global_n == ranks[1].global_n == 5


def test_outside_torchrun_nothing_is_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert distributed.world_size() == 1 and distributed.is_main() and distributed.shard() is None
    assert distributed.init(torch.device("cpu")) == torch.device("cpu")
    assert distributed.sum_all(2.0, 3.0) == [2.0, 3.0]
    distributed.launch(1, "stages.finetune")  # nproc 1: returns, runs here
