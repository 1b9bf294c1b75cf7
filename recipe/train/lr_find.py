"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates"; fast.ai's ``lr_find``).

Contract: :func:`range_test` trains for up to ``iterations`` batches while the rate grows
exponentially from ``start_lr`` to ``end_lr``, records the loss and its bias-corrected
exponential moving average, stops once the smoothed loss exceeds ``diverge`` times its minimum,
and restores the weights and optimizer it was given. :func:`suggest` turns a curve into rates by
the rules in :data:`RULES` (their constants are ``lr_find.rules`` in conf/config.yaml, fast.ai's
values; none is written here):

- ``valley``: the longest stretch over which the loss keeps falling, cut in ``valley_sections``
  parts; the point ``valley_offset`` of the way into the second part (fast.ai >= 2.5's default:
  3 parts, halfway);
- ``steep``: where the smoothed loss falls fastest per unit of log(lr);
- ``minimum``: the rate at the lowest smoothed loss, divided by ``minimum_divisor`` (fast.ai 1's
  rule of thumb: 10);
- ``slide``: walking back from the end, the first rate where the loss gradient stops changing
  (Novak's "slide" rule in fast.ai: gradients ``slide_lr_diff`` points apart within
  ``slide_thresh``).

:func:`run` is the lr_find stage: the range test of a new head on the frozen body's cached
features (what ``train_head.lr: auto`` uses). The sweep of the unfrozen model belongs to the
stage that trains it: ``finetune.lr: auto`` calls :func:`sweep` on the trained head's model.
"""
from __future__ import annotations

import copy
import csv
import json
import math
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from recipe.core.errors import DataError
from recipe.data.loader import Batches
from recipe.report import plots
from recipe.train.learner import Common, pretrained
from recipe.train.models import Classifier, freeze_to
from recipe.train.schema import LrFindConfig
from recipe.train.session import batches, features, load_data

# The rules' names: suggest() gives one rate for each; the schema checks lr_find.suggestion against them.
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


def suggest(lrs: list[float], losses: list[float], *, iterations: int, min_points: int, skip_start: float,
            skip_end: int, min_kept: int, valley_sections: int, valley_offset: float, minimum_divisor: float,
            slide_lr_diff: int, slide_thresh: float) -> dict[str, float]:
    """Every rule's suggestion for a curve (``losses`` should be the smoothed ones).

    As fast.ai does, the first ``skip_start`` of the planned ``iterations`` (the moving average is
    still settling there) and the last ``skip_end`` points (the blow-up) are left out when at
    least ``min_kept`` points remain; a curve of fewer than ``min_points`` points is refused.
    """
    if len(lrs) < min_points:
        raise ValueError(f"the range test recorded only {len(lrs)} points; too few to suggest a rate "
                         f"(lr_find.rules.min_points = {min_points})")
    lrs_a, loss_a = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    head, tail = math.floor(iterations * skip_start), skip_end
    if len(lrs) - head - tail >= min_kept:
        lrs_a, loss_a = lrs_a[head:len(lrs_a) - tail], loss_a[head:len(loss_a) - tail]
    return {"valley": valley(lrs_a, loss_a, sections=valley_sections, offset=valley_offset),
            "steep": steep(lrs_a, loss_a),
            "minimum": minimum(lrs_a, loss_a, divisor=minimum_divisor),
            "slide": slide(lrs_a, loss_a, lr_diff=slide_lr_diff, thresh=slide_thresh)}


def valley(lrs: np.ndarray, losses: np.ndarray, *, sections: int, offset: float) -> float:
    # Longest strictly decreasing subsequence ending at each point (O(n^2), n <= a few hundred).
    n = len(losses)
    run = np.ones(n, dtype=int)
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[j] + 1 > run[i]:
                run[i] = run[j] + 1
    end = int(np.argmax(run))  # first index with the longest run
    start = end - run[end]
    part = (end - start) / sections
    return float(lrs[max(0, start + int(part) + int(part * offset))])


def steep(lrs: np.ndarray, losses: np.ndarray) -> float:
    grad = np.gradient(losses, np.log(lrs))
    return float(lrs[int(np.argmin(grad))])


def minimum(lrs: np.ndarray, losses: np.ndarray, *, divisor: float) -> float:
    return float(lrs[int(np.argmin(losses))] / divisor)


def slide(lrs: np.ndarray, losses: np.ndarray, *, lr_diff: int, thresh: float) -> float:
    grad = np.gradient(losses)
    n = len(losses)
    right, left = n - 1, n - 1 - lr_diff
    chosen = lrs[max(0, left)]
    while left >= 0 and abs(grad[right] - grad[left]) > thresh:
        chosen = lrs[left]
        right -= 1
        left -= 1
    return float(chosen)


# --- the stage ------------------------------------------------------------------------------

def run(common: Common, cfg: LrFindConfig, *, split: Path, raw: Path, curve_csv: Path, plot: Path,
        suggestion: Path) -> dict:
    """The lr_find stage: the range test of a new head on the frozen body's cached features."""
    t0 = time.perf_counter()
    device = common.start()
    data = load_data(split, raw, size=common.train.image_size, workers=common.train.workers)
    model = pretrained(common, data, device)
    freeze_to(model, model.head_group)
    f = features(model, common.batches(data.train, device, train=False), amp=common.train.amp)
    train = batches((f, data.train.training_targets), batch_size=common.train.batch_size, train=True, seed=common.seed,
                    device=device)
    result = sweep(model.head, model, common, cfg, train, [1.0] * len(model.groups), None, multi_label=data.multi_label)
    write(result, cfg.suggestion, curve_csv=curve_csv, plot=plot, suggestion=suggestion)
    return {**result["summary"], "time_s": round(time.perf_counter() - t0, 1)}


def sweep(module: nn.Module, model: Classifier, common: Common, cfg: LrFindConfig, train: Batches,
          ratios: list[float], train_mode: Callable[[], None] | None, *, multi_label: bool) -> dict:
    """Range-test ``module`` (the head alone, or the model) with an optimizer over ``model``'s
    layer groups at ``ratios`` of the swept rate; the curve and the rules' suggestions."""
    opt = common.optimizer(model, ratios)
    curve = range_test(module, batches=train.epoch, optimizer=opt, loss_fn=common.loss(multi_label=multi_label),
                       start_lr=cfg.start_lr,
                       end_lr=cfg.end_lr, iterations=cfg.iterations, smoothing=cfg.smoothing, diverge=cfg.diverge,
                       train_mode=train_mode)
    try:
        rules = suggest(curve["lr"], curve["smoothed"], iterations=cfg.iterations, **cfg.rules.model_dump())
    except ValueError as exc:
        raise DataError(f"lr_find: {exc} (the loss diverged at once? lower lr_find.start_lr)") from None
    chosen = rules[cfg.suggestion]
    summary = {"lr": chosen, "rule": cfg.suggestion, "suggestions": rules, "points": len(curve["lr"]),
               "stopped_early": len(curve["lr"]) < cfg.iterations, "min_loss": min(curve["smoothed"])}
    return {"curve": curve, "summary": summary}


def write(result: dict, rule: str, *, curve_csv: Path, plot: Path, suggestion: Path) -> None:
    """The curve (CSV), its picture with every rule's suggestion marked, and suggestion.json."""
    curve, summary = result["curve"], result["summary"]
    curve_csv.parent.mkdir(parents=True, exist_ok=True)
    with curve_csv.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lr", "loss", "smoothed"])
        w.writerows(zip(curve["lr"], curve["loss"], curve["smoothed"]))
    plots.lr_curve(curve["lr"], curve["loss"], curve["smoothed"], summary["suggestions"], rule, plot)
    suggestion.parent.mkdir(parents=True, exist_ok=True)
    suggestion.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"lr_find: {summary['points']} points; suggestions "
          + ", ".join(f"{k} {v:.2e}" for k, v in summary["suggestions"].items()) + f"; using {rule}: {summary['lr']:.2e}")
