"""DistributedDataParallel for the training stages (train_head, finetune, resize).

Two ways in, one code path:

- ``train.nproc: N`` (N > 1): the stage starts itself again under ``torchrun --standalone
  --nproc_per_node N`` (one machine, N processes) and exits with its status;
- the user's own ``torchrun`` (several nodes, a rendezvous endpoint): the stage sees
  ``WORLD_SIZE`` and joins the group that torchrun made.

``train.batch_size`` is the *global* batch. Every rank holds the same images in memory and
draws the same shuffled order and the same augmentation (both seeded by seed and epoch) for
the whole global batch, then keeps its own contiguous slice of it; each rank's loss is weighted
by its share, so DDP's averaged gradient equals the one-process gradient of the global batch
and a run matches one process up to float summation order. Validation runs whole on every
rank, so early stopping decides the same everywhere. Only rank 0 writes files and logs to
MLflow. A choice every rank must share (``finetune.lr: auto``'s range test) is made by rank 0
alone and sent to the others (:func:`on_main`). Backends: NCCL on CUDA, gloo on the CPU.
BatchNorm layers in train mode see their own slice (DDP broadcasts rank 0's running
statistics), as without SyncBatchNorm.
"""
from __future__ import annotations

import atexit
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Callable, TypeVar

from recipe.core.errors import ConfigError, RecipeError

if TYPE_CHECKING:  # torch is imported where it is used: the data stages load this module and need no torch
    import torch

T = TypeVar("T")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def launch(nproc: int, module: str) -> None:
    """With ``nproc > 1`` outside torchrun: run ``python -m module <same args>`` under
    torchrun on this machine and exit with its status. Otherwise return and run here."""
    import torch.distributed as dist
    if nproc <= 1 or "LOCAL_RANK" in os.environ:
        return
    if not dist.is_available():
        raise ConfigError(f"train.nproc = {nproc}: this PyTorch build has no torch.distributed (use 1)")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", module, *sys.argv[1:]]
    print(f"{module.rsplit('.', 1)[-1]}: {nproc} processes (DistributedDataParallel): {' '.join(cmd[1:])}",
          flush=True)
    sys.exit(subprocess.call(cmd))


def init(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (once); returns this rank's device."""
    import torch
    import torch.distributed as dist
    if world_size() <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        atexit.register(_leave)
    return device


def _leave() -> None:
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()


def shard() -> tuple[int, int] | None:
    """``(rank, world size)`` under DDP, else None: which slice of each global batch is ours."""
    import torch.distributed as dist
    return (dist.get_rank(), dist.get_world_size()) if active() else None


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The module DDP-wrapped for training (only parameters that require grad are synced)."""
    if not active():
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def sum_all(*values: float) -> list[float]:
    """Each value summed over the ranks (the values themselves without DDP)."""
    import torch
    import torch.distributed as dist
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` run by rank 0 alone, its (picklable) result sent to every rank; without DDP just
    ``fn()``. The other ranks wait in the broadcast (the process group's timeout: 30 min gloo,
    10 min NCCL). An error on rank 0 reaches every rank, so none is left waiting: a
    :class:`RecipeError` as itself (each rank's one-line message), anything else as a RuntimeError."""
    import torch.distributed as dist
    if not active():
        return fn()
    box: list = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = (True, fn())
        except BaseException as exc:
            dist.broadcast_object_list([(False, exc if isinstance(exc, RecipeError) else RuntimeError(
                f"rank 0 failed: {type(exc).__name__}: {exc}"))], src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value
