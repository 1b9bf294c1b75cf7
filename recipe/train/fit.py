"""The fit loop: epochs of training, validation, history, checkpoints, resume, early stopping.

Contract: :func:`fit` trains ``module`` for up to ``epochs`` epochs and returns the history (one
dict per epoch: epoch, train_loss, valid_loss, accuracy, lr, time). After every epoch it writes
a resume state (weights, optimizer, schedule, history, RNG state) to ``resume``; called again
with the same ``fingerprint`` it continues from there, and because each epoch's batches and
augmentations are seeded by ``(seed, epoch)`` and the RNG state is restored, the resumed run
ends with the same numbers as an uninterrupted one (on the CPU). With ``patience`` it stops when
the monitored value has not improved for that many epochs (judged after every epoch, or with
``stop_at`` only after those epochs: SGDR's cycle ends, since a restart raises the loss on
purpose; with ``whole_cycles`` as well, only once the whole cycle just ended, however long, has not
lowered it); it ends with the weights of the best
epoch (``keep="best"``; with ``start_loss``, the starting weights count as epoch -1) or the
last one.

Each row also carries what the pictures of a stage need: ``rates``, every layer group's rate at
every batch (one dict per batch, group name -> rate, the rate that batch trained at; a group's
``.no_decay`` half shares its rate), and with ``watch`` (indices into ``valid``) ``watched``, the
probability each of those valid images gives its true class after the epoch (prediction
dynamics). A parameter group with an ``l1`` coefficient adds ``l1 * sum|w|`` of its parameters to
the loss (recipe.train.models.param_groups puts it on the weights that get weight decay); the row's
``l1_loss`` is that term's mean over the epoch's batches, ``train_loss`` the data loss alone.
With ``average`` (:func:`moving_average`) an exponential moving average of the weights is updated
after every step and kept in the resume state, so a resumed run's average is the same too.

A non-finite loss stops training with :class:`Diverged`, naming the epoch, step and rate.
"""
from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from recipe.core import distributed
from recipe.core.errors import DataError, RecipeError
from recipe.data.loader import Batches
from recipe.train.optim import Schedule, current_lrs


class Diverged(RecipeError):
    pass


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on GPUs that have it (no loss scaling needed), fp16 otherwise; off on CPU."""
    if not amp or device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


@torch.no_grad()
def validate(module: nn.Module, batches: Batches, *, loss_fn: Callable, amp: bool = False) -> dict:
    """Mean loss, accuracy and the probabilities (float32, CPU) over one pass of ``batches``. With
    several labels per image (labels ``(N, classes)``): each label's sigmoid, and the accuracy of
    the yes/no answers at 0.5 over every image and label (fastai's ``accuracy_multi``)."""
    was = module.training
    module.eval()
    total, correct, n, probs = 0.0, 0, 0, []
    for x, y in batches:
        with autocast(batches.device, amp):
            logits = module(x)
        logits = logits.float()
        total += loss_fn(logits, y).item() * len(y)
        n += len(y)
        if y.dim() == 2:
            correct += ((logits > 0) == (y > 0.5)).float().mean(1).sum().item()
            probs.append(logits.sigmoid().cpu())
        else:
            correct += (logits.argmax(1) == y).sum().item()
            probs.append(logits.softmax(1).cpu())
    module.train(was)
    return {"loss": total / n, "accuracy": correct / n, "probs": torch.cat(probs)}


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``module``'s state dict (the best epoch's weights)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _restore(state: dict, module: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule,
             phase: str, average: AveragedModel | None = None) -> tuple[list[dict], float, int, int, dict | None]:
    """The history, best, bad, next epoch and best weights of a resume ``state``, once the module,
    optimizer, schedule, moving average and RNG are back where it left them (its rows printed again)."""
    module.load_state_dict(state["model"])
    if average is not None:
        average.load_state_dict(state["average"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    history, best, bad, start = state["history"], state["best"], state["bad"], state["epoch"]
    best_state = state.get("best_model")
    torch.set_rng_state(state["rng"])
    for row in history:
        print_row(row, header=row is history[0], phase=phase)
    return history, best, bad, start, best_state


def _optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler, clip_grad: float | None) -> None:
    """Nothing: one optimizer step on ``loss`` (zero the gradients, backward, unscale, clip, step)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if clip_grad:
        nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def _train_epoch(net: nn.Module, module: nn.Module, train: Batches, epoch: int, *, optimizer: torch.optim.Optimizer,
                 schedule: Schedule, loss_fn: Callable, amp: bool, clip_grad: float | None, scaler, l1_terms: list,
                 phase: str, average: AveragedModel | None = None) -> tuple[float, int, float, list[dict], float, int]:
    """One epoch's pass over ``train``, a step per batch: this rank's summed loss and image count,
    the summed L1 term, each batch's group rates, the last batch's rate and the number of steps."""
    device = train.device
    total, seen, l1_total, rates = 0.0, 0, 0.0, []
    bar = _Progress(len(train), f"{phase} epoch {epoch}")
    for step, (x, y) in enumerate(train.epoch(epoch)):
        with autocast(device, amp):
            loss = loss_fn(net(x).float(), y)
        value = loss.item()  # the mean over this rank's images
        if net is not module:  # this rank's share of the global batch; DDP averages over ranks
            loss = loss * (len(y) * distributed.world_size() / train.global_n)
        if l1_terms:  # every rank adds the whole term: DDP's mean of the ranks' gradients keeps it once
            penalty = l1_penalty(l1_terms)
            loss = loss + penalty
            l1_total += penalty.item()
        if not math.isfinite(value):
            raise Diverged(f"{phase}: loss is {value} at epoch {epoch}, step {step} "
                           f"(lr {max(current_lrs(optimizer)):.3g}); lower the learning rate")
        _optimizer_step(loss, optimizer, scaler, clip_grad)
        if average is not None:
            average.update_parameters(module)
        lr_used = max(current_lrs(optimizer))  # the rate this batch trained at (before the schedule moves)
        rates.append(group_rates(optimizer))
        schedule.step_batch()
        total += value * len(y)
        seen += len(y)
        bar.update(step + 1, value)
    bar.close()
    return total, seen, l1_total, rates, lr_used, step + 1


def _epoch_row(epoch: int, train_loss: float, result: dict, lr_used: float, t0: float, *, l1_loss: float | None,
               rates: list[dict], watch: Sequence[int] | None, valid: Batches) -> dict:
    """The history's row for one epoch (its time measured now, from ``t0``)."""
    row = {"epoch": epoch, "train_loss": train_loss, "valid_loss": result["loss"],
           "accuracy": result["accuracy"], "lr": lr_used,
           "time": time.perf_counter() - t0}
    if l1_loss is not None:
        row["l1_loss"] = l1_loss
    row["rates"] = rates
    if watch is not None:
        truth = valid.y[list(watch)].long()
        row["watched"] = result["probs"][list(watch)].gather(1, truth[:, None])[:, 0].tolist()
    return row


def _track_best(valid_loss: float, best: float, bad: int, best_state: dict | None, module: nn.Module,
                keep: str) -> tuple[float, int, dict | None]:
    """The best valid loss, the epochs since it improved and the best weights, after an epoch's ``valid_loss``."""
    if valid_loss < best:
        return valid_loss, 0, _snapshot(module) if keep == "best" else None
    return best, bad + 1, best_state


def fit(module: nn.Module, *, train: Batches, valid: Batches, epochs: int, optimizer: torch.optim.Optimizer,
        schedule: Schedule, loss_fn: Callable, train_mode: Callable[[], None] | None = None,
        amp: bool = False, clip_grad: float | None = None, patience: int | None = None,
        keep: str = "best", resume: Path | None = None, fingerprint: str = "",
        phase: str = "train", on_epoch: Callable[[dict], None] | None = None,
        start_loss: float | None = None, watch: Sequence[int] | None = None,
        stop_at: Sequence[int] | None = None, whole_cycles: bool = False,
        average: AveragedModel | None = None) -> list[dict]:
    """The history: one row per epoch trained (see the module's docstring)."""
    device = train.device
    history: list[dict] = []
    best, best_state, bad = math.inf, None, 0
    if start_loss is not None and keep == "best":
        # The weights we start from are a candidate too: a phase that only makes the model
        # worse on the valid set hands on what it was given.
        best, best_state = start_loss, _snapshot(module)
    start = 0
    state = _load_resume(resume, fingerprint)
    if state is not None:
        history, best, bad, start, best_state = _restore(state, module, optimizer, schedule, phase, average)
        if state["done"]:
            return history
        print(f"{phase}: resuming after epoch {start - 1} from {resume}", file=sys.stderr)

    if len(train) == 0:
        raise DataError(f"{phase}: the training set gives no batch (fewer images than one batch?)")
    net = distributed.wrap(module, device)  # DDP under torchrun: gradients averaged over the ranks
    use_fp16_scaler = amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda") if use_fp16_scaler else None
    stopped = False
    l1_terms = [(g["l1"], g["params"]) for g in optimizer.param_groups if g.get("l1")]
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        module.train()
        if train_mode is not None:
            train_mode()
        total, seen, l1_total, rates, lr_used, steps = _train_epoch(
            net, module, train, epoch, optimizer=optimizer, schedule=schedule, loss_fn=loss_fn, amp=amp,
            clip_grad=clip_grad, scaler=scaler, l1_terms=l1_terms, phase=phase, average=average)
        total, seen = distributed.sum_all(total, seen)  # the epoch's train loss over every rank's images
        result = validate(module, valid, loss_fn=loss_fn, amp=amp)
        row = _epoch_row(epoch, total / seen, result, lr_used, t0, l1_loss=l1_total / steps if l1_terms else None,
                         rates=rates, watch=watch, valid=valid)
        schedule.step_epoch(result["loss"])
        history.append(row)
        print_row(row, header=epoch == 0, phase=phase)
        if on_epoch is not None:
            on_epoch(row)
        best, bad, best_state = _track_best(row["valid_loss"], best, bad, best_state, module, keep)
        stopped = patience is not None and bad >= _patience(patience, epoch, stop_at, whole_cycles) \
            and (stop_at is None or epoch in stop_at)
        last = epoch + 1 >= epochs or stopped
        if last and keep == "best" and best_state is not None:
            module.load_state_dict(best_state)
        _save_resume(resume, fingerprint=fingerprint, module=module, optimizer=optimizer, schedule=schedule,
                     history=history, best=best, bad=bad, epoch=epoch + 1, done=last,
                     best_state=None if last else best_state, average=average)
        if stopped:
            if epoch + 1 < epochs and distributed.is_main():
                print(f"{phase}: early stop after epoch {epoch}: valid loss has not improved for {bad} epochs "
                      f"(patience {patience})")
            break
    return history


def _patience(patience: int, epoch: int, stop_at: Sequence[int] | None, whole_cycles: bool) -> int:
    """The epochs without a lower valid loss that stop the fit after ``epoch``: ``patience``, or with
    ``whole_cycles`` at least the length of the cycle that ends there (the epochs since the previous
    end in ``stop_at``)."""
    if not whole_cycles or not stop_at:
        return patience
    return max(patience, epoch - max((e for e in stop_at if e < epoch), default=-1))


def moving_average(module: nn.Module, *, epochs: float, steps_per_epoch: int) -> AveragedModel:
    """An exponential moving average of ``module``'s weights and BatchNorm statistics, updated
    after every optimizer step (:func:`fit`'s ``average``), whose horizon is ``epochs`` epochs:
    decay ``1 - 1 / (epochs * steps_per_epoch)`` per step (Polyak averaging; timm's ModelEmaV3)."""
    decay = 1.0 - 1.0 / max(epochs * steps_per_epoch, 1.0)
    return AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def l1_penalty(terms: Sequence[tuple[float, Sequence[torch.Tensor]]]) -> torch.Tensor:
    """``sum(l1 * sum|w|)`` over ``(l1, parameters)`` pairs: the L1 term of the loss."""
    return sum(l1 * sum(p.abs().sum() for p in params) for l1, params in terms)


def group_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Each layer group's current rate, by name (``.no_decay`` halves folded into their group)."""
    return {str(g.get("name", i)).removesuffix(".no_decay"): g["lr"] for i, g in enumerate(optimizer.param_groups)}


def _load_resume(path: Path | None, fingerprint: str) -> dict | None:
    if path is None or not Path(path).is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint:
        print(f"{path}: resume state is from other settings or inputs; starting over", file=sys.stderr)
        return None
    return state


def _save_resume(path: Path | None, *, fingerprint, module, optimizer, schedule, history, best, bad, epoch,
                 done, best_state, average: AveragedModel | None = None) -> None:
    if path is None or not distributed.is_main():  # rank 0 writes; every rank can read it back
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"fingerprint": fingerprint, "epoch": epoch, "done": done, "model": module.state_dict(),
             "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "history": history,
             "best": best, "bad": bad, "rng": torch.get_rng_state()}
    if best_state is not None:
        state["best_model"] = best_state
    if average is not None:
        state["average"] = average.state_dict()
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a kill mid-write leaves the previous state intact


COLUMNS = ("epoch", "train_loss", "valid_loss", "accuracy", "lr", "time")


def print_row(row: dict, *, header: bool, phase: str) -> None:
    """The table fast.ai prints: one line per epoch (rank 0's, under DDP)."""
    if not distributed.is_main():
        return
    if header:
        print(f"{phase}\n" + "  ".join(f"{c:>10}" for c in COLUMNS))
    minutes, seconds = divmod(int(round(row["time"])), 60)
    print(f"{row['epoch']:>10}  {row['train_loss']:>10.6f}  {row['valid_loss']:>10.6f}  "
          f"{row['accuracy']:>10.4f}  {row['lr']:>10.2e}  {minutes:>7}:{seconds:02d}", flush=True)


class _Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, total: int, label: str):
        self.total, self.label = total, label
        self.on = sys.stderr.isatty()
        self.t0 = time.perf_counter()

    def update(self, done: int, loss: float) -> None:
        if self.on:
            width = 30
            fill = int(width * done / max(1, self.total))
            rate = done / max(1e-9, time.perf_counter() - self.t0)
            print(f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] {done}/{self.total} "
                  f"loss {loss:.4f} {rate:.1f} it/s", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.on:
            print("\r" + " " * 100 + "\r", end="", file=sys.stderr, flush=True)
