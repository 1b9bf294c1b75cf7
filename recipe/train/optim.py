"""Optimizers and learning-rate schedules, built from their config sections.

Contract: :data:`OPTIMIZERS` and :data:`SCHEDULES` are the registries: a name (the ``name`` key
of a ``conf/optim/`` or ``conf/schedule/`` file) and the function that builds it from that
file's other keys, passed as keyword arguments of the same names. Adding one is an entry here,
its schema in recipe/train/schema.py (the discriminated union's tag is the name) and its preset in
conf/; tests/test_optim.py checks the three agree. :func:`make_optimizer` takes parameter groups
that already carry their own ``lr`` (discriminative rates) and ``weight_decay``;
:func:`make_schedule` returns a :class:`Schedule` that the fit loop calls after every batch
(``step_batch``) and after every epoch (``step_epoch(valid_loss)``), whichever the schedule is
driven by. All of them are PyTorch's own optimizers and schedulers; the names are the recipe's.
:func:`lr_scale` is ``optim.lr_scaling``'s factor for the rates at a batch size (:data:`LR_SCALING`);
recipe.train.learner.Common.optimizer applies it, once, to every rate a training stage builds with.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

S = torch.optim.lr_scheduler  # the schedule builders below use PyTorch's own schedulers


# --- optimizers: builder(groups, **the preset's own keys) -----------------------------------

def _sgd(groups: list[dict], *, momentum: float, nesterov: bool) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, momentum=momentum, nesterov=nesterov, lr=groups[0]["lr"])


def _adam(groups: list[dict], *, betas: list[float], eps: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, betas=tuple(betas), eps=eps)


def _adamw(groups: list[dict], *, betas: list[float], eps: float) -> torch.optim.Optimizer:
    """Loshchilov & Hutter (2019): Adam with decoupled weight decay."""
    return torch.optim.AdamW(groups, betas=tuple(betas), eps=eps)


def _rmsprop(groups: list[dict], *, alpha: float, momentum: float, eps: float) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(groups, alpha=alpha, momentum=momentum, eps=eps)


def _adagrad(groups: list[dict], *, eps: float) -> torch.optim.Optimizer:
    return torch.optim.Adagrad(groups, eps=eps)


def _adadelta(groups: list[dict], *, rho: float, eps: float) -> torch.optim.Optimizer:
    return torch.optim.Adadelta(groups, rho=rho, eps=eps)


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": _sgd, "adam": _adam, "adamw": _adamw, "rmsprop": _rmsprop, "adagrad": _adagrad, "adadelta": _adadelta,
}


# --- the rates and the batch size: rule(batch_size / lr_reference_batch) -> the rates' factor ---

LR_SCALING: dict[str, Callable[[float], float]] = {
    "none": lambda ratio: 1.0,
    # Goyal et al. (2017), "Accurate, Large Minibatch SGD": k times the batch, k times the rate.
    "linear": lambda ratio: ratio,
    # Krizhevsky (2014), "One weird trick"; Hoffer et al. (2017), "Train longer, generalize better":
    # the update's noise keeps its variance.
    "sqrt": math.sqrt,
}


def lr_scale(rule: str, *, batch_size: int, reference_batch: int) -> float:
    """The factor ``optim.lr_scaling`` puts on every configured rate when training at ``batch_size``
    with rates stated for ``reference_batch`` (``optim.lr_reference_batch``): the ratio of the two
    (linear), its square root (sqrt), or 1 (none)."""
    if rule not in LR_SCALING:
        raise ValueError(f"unknown lr_scaling {rule!r}; one of {', '.join(LR_SCALING)}")
    return float(LR_SCALING[rule](batch_size / reference_batch))


def make_optimizer(groups: list[dict], *, name: str, **cfg: Any) -> torch.optim.Optimizer:
    """``cfg`` holds the optimizer's own keys (momentum, betas, ...); ``weight_decay`` is per group."""
    cfg.pop("weight_decay", None)
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](groups, **cfg)


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


# --- schedules: builder(opt, total batches, batches per epoch, **the preset's own keys) -------

def _onecycle(opt: torch.optim.Optimizer, total: int, steps_per_epoch: int, *, pct_start: float, div_factor: float,
              final_div_factor: float, cycle_momentum: bool) -> Schedule:
    """Smith & Topin (2017), "Super-convergence"; per batch."""
    # PyTorch divides by the warm-up's length in steps, which must be at least 1.
    total = max(total, int(2 / pct_start) + 2)
    return Schedule(S.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=total,
                                 pct_start=pct_start, div_factor=div_factor, final_div_factor=final_div_factor,
                                 cycle_momentum=cycle_momentum and _has_momentum(opt)), "batch")


def _sgdr(opt: torch.optim.Optimizer, total: int, steps_per_epoch: int, *, cycle_len: int, cycle_mult: int,
          eta_min: float) -> Schedule:
    """Loshchilov & Hutter (2017), cosine annealing with warm restarts: the first cycle lasts
    ``cycle_len`` epochs, each next one ``cycle_mult`` times longer; per batch."""
    # eta_min is a fraction of each group's rate, but PyTorch takes one absolute value:
    # scale per group through a LambdaLR written as SGDR's closed form.
    return Schedule(S.LambdaLR(opt, sgdr_factor(cycle_len=cycle_len * steps_per_epoch, cycle_mult=cycle_mult,
                                                eta_min=eta_min)), "batch")


def _cosine(opt: torch.optim.Optimizer, total: int, steps_per_epoch: int, *, eta_min: float) -> Schedule:
    """One cosine from the rate down to ``eta_min`` (a fraction of it); per batch."""
    return Schedule(S.LambdaLR(opt, sgdr_factor(cycle_len=total, cycle_mult=1, eta_min=eta_min)), "batch")


def _step(opt: torch.optim.Optimizer, total: int, steps_per_epoch: int, *, step_size: int, gamma: float) -> Schedule:
    """Multiply by ``gamma`` every ``step_size`` epochs."""
    return Schedule(S.StepLR(opt, step_size=step_size, gamma=gamma), "epoch")


def _multistep(opt: torch.optim.Optimizer, total: int, steps_per_epoch: int, *, milestones: list[int],
               gamma: float) -> Schedule:
    """Multiply by ``gamma`` at each of the ``milestones`` (epochs)."""
    return Schedule(S.MultiStepLR(opt, milestones=list(milestones), gamma=gamma), "epoch")


def _exponential(opt: torch.optim.Optimizer, total: int, steps_per_epoch: int, *, gamma: float) -> Schedule:
    """Multiply by ``gamma`` every epoch."""
    return Schedule(S.ExponentialLR(opt, gamma=gamma), "epoch")


def _plateau(opt: torch.optim.Optimizer, total: int, steps_per_epoch: int, *, factor: float,
             patience: int) -> Schedule:
    """Multiply by ``factor`` after ``patience`` epochs without a better valid loss."""
    return Schedule(S.ReduceLROnPlateau(opt, factor=factor, patience=patience), "plateau")


def _constant(opt: torch.optim.Optimizer, total: int, steps_per_epoch: int) -> Schedule:
    return Schedule(None, "never")


SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "onecycle": _onecycle, "sgdr": _sgdr, "cosine": _cosine, "step": _step, "multistep": _multistep,
    "exponential": _exponential, "plateau": _plateau, "constant": _constant,
}


def make_schedule(opt: torch.optim.Optimizer, *, name: str, epochs: int, steps_per_epoch: int,
                  **cfg: Any) -> Schedule:
    """``cfg`` holds the schedule's own keys (the preset's, less ``name``)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; one of {', '.join(SCHEDULES)}")
    return SCHEDULES[name](opt, max(1, epochs * steps_per_epoch), steps_per_epoch, **cfg)


def sgdr_factor(*, cycle_len: int, cycle_mult: int, eta_min: float):
    """Multiplier of the base rate at batch ``t`` under SGDR: inside a cycle of ``T`` batches,
    ``eta_min + (1 - eta_min) * (1 + cos(pi * t_cur / T)) / 2``; cycles last ``cycle_len``,
    ``cycle_len * cycle_mult``, ... batches."""
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


def cycle_ends(schedule: dict, epochs: int) -> list[int]:
    """The epochs (0-based, within a phase of ``epochs``) at whose end an SGDR cycle ends, the
    last epoch included (Huang et al. 2017's snapshots); [] for every other schedule."""
    if schedule.get("name") != "sgdr" or epochs < 1:
        return []
    ends, length, end = [], schedule["cycle_len"], 0
    while end + length <= epochs:
        end += length
        ends.append(end - 1)
        length *= schedule["cycle_mult"]
    if not ends or ends[-1] != epochs - 1:
        ends.append(epochs - 1)
    return ends
