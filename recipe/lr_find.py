"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates"; fast.ai's ``lr_find``).

Contract: :func:`range_test` trains for up to ``iterations`` batches while the rate grows
exponentially from ``start_lr`` to ``end_lr``, records the loss and its bias-corrected
exponential moving average, stops once the smoothed loss exceeds ``diverge`` times its minimum,
and restores the weights and optimizer it was given. :func:`suggest` turns a curve into rates by
the rules in :data:`RULES`:

- ``valley``: the longest stretch over which the loss keeps falling; a point 1/2 of the way in
  past its first third (fast.ai >= 2.5's default);
- ``steep``: where the smoothed loss falls fastest per unit of log(lr);
- ``minimum``: the rate at the lowest smoothed loss, divided by 10 (fast.ai 1's rule of thumb);
- ``slide``: walking back from the end, the first rate where the loss gradient stops changing
  (Novak's "slide" rule in fast.ai).
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

RULES = ("valley", "steep", "minimum", "slide")


def range_test(module: nn.Module, *, batches: Callable[[int], Iterator], optimizer: torch.optim.Optimizer,
               loss_fn: Callable, start_lr: float, end_lr: float, iterations: int, smoothing: float,
               diverge: float, train_mode: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """``batches(epoch)`` yields ``(x, y)``; it is called again when an epoch runs out.

    The rates keep the ratios between the optimizer's groups: group ``g`` gets
    ``lr * base_g / max(base)``, so discriminative rates are swept together.
    """
    saved_model = copy.deepcopy(module.state_dict())
    saved_opt = copy.deepcopy(optimizer.state_dict())
    bases = [g["lr"] for g in optimizer.param_groups]
    top = max(bases)
    ratio = (end_lr / start_lr) ** (1 / max(1, iterations - 1))
    lrs, losses, smooth = [], [], []
    avg, best = 0.0, math.inf
    module.train()
    if train_mode is not None:
        train_mode()
    it, epoch = 0, 0
    stream = batches(epoch)
    while it < iterations:
        try:
            x, y = next(stream)
        except StopIteration:
            epoch += 1
            stream = batches(epoch)
            continue
        lr = start_lr * ratio ** it
        for g, base in zip(optimizer.param_groups, bases):
            g["lr"] = lr * base / top
        loss = loss_fn(module(x).float(), y)
        value = loss.item()
        if not math.isfinite(value):
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        avg = smoothing * avg + (1 - smoothing) * value
        smoothed = avg / (1 - smoothing ** (it + 1))  # bias correction (as in Adam)
        lrs.append(lr)
        losses.append(value)
        smooth.append(smoothed)
        best = min(best, smoothed)
        it += 1
        if smoothed > diverge * best:
            break
    module.load_state_dict(saved_model)
    optimizer.load_state_dict(saved_opt)
    for g, base in zip(optimizer.param_groups, bases):
        g["lr"] = base
    return {"lr": lrs, "loss": losses, "smoothed": smooth}


def suggest(lrs: list[float], losses: list[float], iterations: int | None = None) -> dict[str, float]:
    """Every rule's suggestion for a curve (``losses`` should be the smoothed ones).

    As fast.ai does, the first tenth of the planned ``iterations`` (the moving average is still
    settling there) and the last 5 points (the blow-up) are left out when enough points remain.
    """
    if len(lrs) < 5:
        raise ValueError(f"the range test recorded only {len(lrs)} points; too few to suggest a rate")
    lrs_a, loss_a = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    head, tail = (iterations or len(lrs)) // 10, 5
    if len(lrs) - head - tail >= 10:
        lrs_a, loss_a = lrs_a[head:-tail], loss_a[head:-tail]
    return {"valley": valley(lrs_a, loss_a), "steep": steep(lrs_a, loss_a),
            "minimum": minimum(lrs_a, loss_a), "slide": slide(lrs_a, loss_a)}


def valley(lrs: np.ndarray, losses: np.ndarray) -> float:
    # Longest strictly decreasing subsequence ending at each point (O(n^2), n <= a few hundred).
    n = len(losses)
    run = np.ones(n, dtype=int)
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[j] + 1 > run[i]:
                run[i] = run[j] + 1
    end = int(np.argmax(run))  # first index with the longest run
    start = end - run[end]
    third = (end - start) / 3
    return float(lrs[max(0, start + int(third) + int(third / 2))])


def steep(lrs: np.ndarray, losses: np.ndarray) -> float:
    grad = np.gradient(losses, np.log(lrs))
    return float(lrs[int(np.argmin(grad))])


def minimum(lrs: np.ndarray, losses: np.ndarray) -> float:
    return float(lrs[int(np.argmin(losses))] / 10)


def slide(lrs: np.ndarray, losses: np.ndarray, lr_diff: int = 15, thresh: float = 0.005) -> float:
    grad = np.gradient(losses)
    n = len(losses)
    right, left = n - 1, n - 1 - lr_diff
    chosen = lrs[max(0, left)]
    while left >= 0 and abs(grad[right] - grad[left]) > thresh:
        chosen = lrs[left]
        right -= 1
        left -= 1
    return float(chosen)
