"""Optimizers and learning-rate schedules, built from their config sections.

Contract: :func:`make_optimizer` takes parameter groups that already carry their own ``lr``
(discriminative rates) and ``weight_decay``; :func:`make_schedule` returns a :class:`Schedule`
that the fit loop calls after every batch (``step_batch``) and after every epoch
(``step_epoch(valid_loss)``), whichever the schedule is driven by. All of them are PyTorch's
own schedulers; the names are the recipe's:

- ``onecycle``: Smith & Topin (2017), "Super-convergence"; per batch.
- ``sgdr``: Loshchilov & Hutter (2017), cosine annealing with warm restarts: the first cycle
  lasts ``cycle_len`` epochs, each next one ``cycle_mult`` times longer; per batch.
- ``cosine``: one cosine from the rate down to ``eta_min`` (a fraction of it); per batch.
- ``step``, ``multistep``, ``exponential``: decay by ``gamma`` per epoch(s).
- ``plateau``: multiply by ``factor`` after ``patience`` epochs without a better valid loss.
- ``constant``.
"""
from __future__ import annotations

from typing import Any

import torch

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta")


def make_optimizer(groups: list[dict], *, name: str, **cfg: Any) -> torch.optim.Optimizer:
    """``cfg`` holds the optimizer's own keys (momentum, betas, ...); ``weight_decay`` is per group."""
    cfg.pop("weight_decay", None)
    if name == "sgd":
        return torch.optim.SGD(groups, momentum=cfg["momentum"], nesterov=cfg["nesterov"], lr=groups[0]["lr"])
    if name == "adam":
        return torch.optim.Adam(groups, betas=tuple(cfg["betas"]), eps=cfg["eps"])
    if name == "adamw":
        return torch.optim.AdamW(groups, betas=tuple(cfg["betas"]), eps=cfg["eps"])
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, alpha=cfg["alpha"], momentum=cfg["momentum"], eps=cfg["eps"])
    if name == "adagrad":
        return torch.optim.Adagrad(groups, eps=cfg["eps"])
    if name == "adadelta":
        return torch.optim.Adadelta(groups, rho=cfg["rho"], eps=cfg["eps"])
    raise ValueError(f"unknown optimizer {name!r}; one of {OPTIMIZERS}")


class Schedule:
    """A PyTorch scheduler plus when to step it."""

    def __init__(self, scheduler: Any, per: str):
        self.scheduler, self.per = scheduler, per  # per: "batch" | "epoch" | "plateau" | "never"

    def step_batch(self) -> None:
        if self.per == "batch":
            self.scheduler.step()

    def step_epoch(self, valid_loss: float) -> None:
        if self.per == "epoch":
            self.scheduler.step()
        elif self.per == "plateau":
            self.scheduler.step(valid_loss)

    def state_dict(self) -> dict:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)


def make_schedule(opt: torch.optim.Optimizer, *, name: str, epochs: int, steps_per_epoch: int,
                  **cfg: Any) -> Schedule:
    S = torch.optim.lr_scheduler
    total = max(1, epochs * steps_per_epoch)
    if name == "onecycle":
        # PyTorch divides by the warm-up's length in steps, which must be at least 1.
        total = max(total, int(2 / cfg["pct_start"]) + 2)
        return Schedule(S.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=total,
                                     pct_start=cfg["pct_start"], div_factor=cfg["div_factor"],
                                     final_div_factor=cfg["final_div_factor"],
                                     cycle_momentum=cfg["cycle_momentum"] and _has_momentum(opt)), "batch")
    if name == "sgdr":
        # eta_min is a fraction of each group's rate, but PyTorch takes one absolute value:
        # scale per group through a LambdaLR written as SGDR's closed form.
        return Schedule(S.LambdaLR(opt, sgdr_factor(cycle_len=cfg["cycle_len"] * steps_per_epoch,
                                                    cycle_mult=cfg["cycle_mult"], eta_min=cfg["eta_min"])), "batch")
    if name == "cosine":
        return Schedule(S.LambdaLR(opt, sgdr_factor(cycle_len=total, cycle_mult=1, eta_min=cfg["eta_min"])), "batch")
    if name == "step":
        return Schedule(S.StepLR(opt, step_size=cfg["step_size"], gamma=cfg["gamma"]), "epoch")
    if name == "multistep":
        return Schedule(S.MultiStepLR(opt, milestones=list(cfg["milestones"]), gamma=cfg["gamma"]), "epoch")
    if name == "exponential":
        return Schedule(S.ExponentialLR(opt, gamma=cfg["gamma"]), "epoch")
    if name == "plateau":
        return Schedule(S.ReduceLROnPlateau(opt, factor=cfg["factor"], patience=cfg["patience"]), "plateau")
    if name == "constant":
        return Schedule(None, "never")
    raise ValueError(f"unknown schedule {name!r}")


def sgdr_factor(*, cycle_len: int, cycle_mult: int, eta_min: float):
    """Multiplier of the base rate at batch ``t`` under SGDR: inside a cycle of ``T`` batches,
    ``eta_min + (1 - eta_min) * (1 + cos(pi * t_cur / T)) / 2``; cycles last ``cycle_len``,
    ``cycle_len * cycle_mult``, ... batches."""
    import math

    cycle_len = max(1, cycle_len)

    def factor(t: int) -> float:
        length, start = cycle_len, 0
        while t >= start + length:
            start, length = start + length, length * cycle_mult
        return eta_min + (1 - eta_min) * (1 + math.cos(math.pi * (t - start) / length)) / 2

    return factor


def _has_momentum(opt: torch.optim.Optimizer) -> bool:
    d = opt.defaults
    return bool(d.get("momentum")) or "betas" in d


def current_lrs(opt: torch.optim.Optimizer) -> list[float]:
    return [g["lr"] for g in opt.param_groups]
