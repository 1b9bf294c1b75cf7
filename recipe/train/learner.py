"""The training context the training stages share: :class:`Learner` (fastai's ``Learner``: one
object holding a stage's config, device, model, data, loss, history and resume state), and the
pieces it is built from.

Contract: :class:`Common` holds the config sections every model stage reads and turns them into
the objects a stage needs (seeded start, loss, augmenter, batches, optimizer over the model's
layer groups). :class:`Learner` runs one stage: :meth:`Learner.phase` is one resumable ``fit()``
whose epochs continue the stage's numbering (with its optimizer, schedule, early stopping and
SGDR snapshots), :meth:`Learner.finish` scores the final model on valid and writes the
checkpoint, the history and its pictures. train_head, finetune and resize are a Learner each;
baseline, lr_find, select and evaluate use :class:`Common` alone. Nothing here imports MLflow:
``log(row, step)`` callbacks carry every epoch out.
"""
from __future__ import annotations

import csv
import functools
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from recipe.core import distributed
from recipe.core.errors import ConfigError, DataError
from recipe.core.layout import TRAINING
from recipe.data.loader import ImageSet
from recipe.report import plots
from recipe.train.augment import Augment, mix
from recipe.train.fit import fit, moving_average, validate
from recipe.train.models import Classifier, param_groups
from recipe.train.optim import cycle_ends, lr_scale, make_optimizer, make_schedule
from recipe.train.schema import AugmentConfig, ModelConfig, OptimConfig, TrainConfig
from recipe.train.session import Data, batches, new_model, pick_device, refresh_bn, save_checkpoint, seed_everything

Log = Callable[[dict, int], None]

@dataclass(frozen=True)
class Common:
    """The sections every model stage reads."""
    seed: int
    train: TrainConfig
    model: ModelConfig | None  # None for stages that start from a checkpoint (its config travels with it)
    optim: OptimConfig | None  # None for stages that train nothing (evaluate)
    augment: AugmentConfig

    def start(self) -> torch.device:
        """Seeds, the device, and under torchrun the process group (recipe.core.distributed)."""
        seed_everything(self.seed)
        return distributed.init(pick_device(self.train.device))

    def loss(self, labels: torch.Tensor | None = None, classes: int | None = None, *,
             multi_label: bool = False) -> nn.Module:
        """Cross-entropy with ``train.label_smoothing``; with ``train.class_weights: balanced`` and the
        train split's ``labels``, each class weighted by n / (classes * its count) (sklearn's
        ``class_weight="balanced"``), so every class weighs alike in the loss. With ``multi_label``
        (several labels per image): binary cross-entropy on each label's logit (:class:`MultiLabelLoss`)."""
        if multi_label:
            if self.train.class_weights != "none":
                raise ConfigError(f"train.class_weights = {self.train.class_weights!r}: it weighs classes that "
                                  "exclude each other; with several labels per image use none")
            return MultiLabelLoss(self.train.label_smoothing)
        weight = None
        if labels is not None and self.train.class_weights == "balanced":
            weight = class_weights(labels, classes)
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=self.train.label_smoothing)

    def augmenter(self) -> Augment:
        return Augment(**self.augment.model_dump())

    def batches(self, images, device, *, train: bool, augment: bool = True, sampled: bool = False):
        """Batches of ``images``; ``sampled``: a training stage's own training batches, drawn as
        ``train.sampler`` says (:meth:`balance`) and mixed as ``train.mix`` says (:meth:`mixer`)."""
        return batches(images, batch_size=self.train.batch_size, train=train, seed=self.seed, device=device,
                       augment=self.augmenter() if augment else None, channels_last=self.train.channels_last,
                       balance=self.balance(images) if sampled else None,
                       mix=self.mixer(len(images.classes)) if sampled and augment else None)

    def mixer(self, classes: int):
        """``train.mix`` (mixup or cutmix, Beta(``train.mix_alpha``)) for the training stages'
        batches of images, or None (``none``). The baseline checks and the range test never mix."""
        if self.train.mix == "none":
            return None
        return functools.partial(mix, kind=self.train.mix, alpha=self.train.mix_alpha, classes=classes)

    def balance(self, images: ImageSet) -> torch.Tensor | None:
        """The class of each image to balance a training stage's batches over (``train.sampler:
        balanced``), or None (``shuffle``: every image once per epoch). The baseline checks and
        the range test always shuffle."""
        if self.train.sampler == "balanced" and images.multi_label:
            raise ConfigError("train.sampler = 'balanced': it draws classes that exclude each other; with several "
                              "labels per image use shuffle")
        return images.labels if self.train.sampler == "balanced" else None

    def lr_scale(self) -> float:
        """``optim.lr_scaling``'s factor at ``train.batch_size`` (the global batch under DDP)."""
        return lr_scale(self.optim.lr_scaling, batch_size=self.train.batch_size,
                        reference_batch=self.optim.lr_reference_batch)

    def optimizer(self, model: Classifier, lrs: list[float]) -> torch.optim.Optimizer:
        """``lrs`` (one per layer group, ``auto`` already resolved) times :meth:`lr_scale`: the one
        place the factor is applied. The range test (recipe.train.lr_find) reads these rates only as
        ratios of their largest, so its sweep (start_lr..end_lr) is not scaled."""
        cfg = self.optim.model_dump()
        del cfg["lr_scaling"], cfg["lr_reference_batch"]  # applied here, not keys of torch's optimizers
        lrs = [lr * self.lr_scale() for lr in lrs]
        groups = param_groups(model, lrs, weight_decay=cfg.pop("weight_decay"),
                              bn_weight_decay=cfg.pop("bn_weight_decay"), l1=cfg.pop("l1"))
        return make_optimizer(groups, **cfg)

    def prepare(self, model: Classifier, device: torch.device) -> Classifier:
        model = model.to(device)
        if self.train.channels_last:  # NHWC: faster on CUDA and, through oneDNN, on the CPU too
            model = model.to(memory_format=torch.channels_last)
        return model


def pretrained(common: Common, data: Data, device: torch.device) -> Classifier:
    """A new model for ``data``: the (pretrained) body and a fresh head. With ``model.adapt_bn``
    the body's BatchNorm statistics are re-estimated on the training images (plain, not
    augmented) before anything is trained on top of them (AdaBN, Li et al. 2016)."""
    model = common.prepare(new_model(common.model, data.classes, data.priors, data.multi_label), device)
    if common.model.adapt_bn:
        refresh_bn(model, common.batches(data.train, device, train=False))
    return model


@dataclass(frozen=True)
class Watch:
    """The valid images whose prediction dynamics a stage records (``train.dynamics_images``)."""
    index: list[int]   # positions in the valid split
    paths: list[str]
    labels: list[str]  # class names


def watch(valid: ImageSet, n: int, seed: int) -> Watch | None:
    """``n`` valid images, stratified (each class its share, largest remainders first, at least
    one per class while ``n`` allows), drawn with ``seed``: the same images in every stage, since
    every stage loads the valid split in split.csv's order. Sorted by class, then position."""
    if n <= 0 or len(valid) == 0 or valid.multi_label:  # several labels per image: no one true class to follow
        return None
    labels = valid.labels.tolist()
    by_class = [[i for i, y in enumerate(labels) if y == c] for c in range(len(valid.classes))]
    by_class = [(c, m) for c, m in enumerate(by_class) if m]
    n = min(n, len(labels))
    exact = [n * len(m) / len(labels) for _, m in by_class]
    take = [int(e) for e in exact]
    for k in sorted(range(len(take)), key=lambda k: exact[k] - take[k], reverse=True)[:n - sum(take)]:
        take[k] += 1
    while n >= len(take) and 0 in take:  # a class too small for its share still gets one image
        take[take.index(0)] += 1
        take[take.index(max(take))] -= 1
    gen = torch.Generator().manual_seed(seed)
    index = []
    for (_, members), t in zip(by_class, take):
        order = torch.randperm(len(members), generator=gen).tolist()
        index += sorted(members[i] for i in order[:t])
    return Watch(index=index, paths=[valid.paths[i] for i in index],
                 labels=[valid.classes[labels[i]] for i in index])


HISTORY_COLUMNS = ["phase", "epoch", "train_loss", "valid_loss", "accuracy", "lr", "time"]


class History:
    """Epoch rows of one stage across its phases, numbered on from phase to phase, with the
    pictures' data each row carries (recipe.train.fit: ``rates`` per batch, ``watched``)."""

    def __init__(self, log: Log | None, watch: Watch | None = None):
        self.rows: list[dict] = []
        self.log = log
        self.watch = watch

    def write(self, path: Path) -> None:
        """``path`` (history.csv: one row per epoch, ``l1_loss`` too when an L1 term trained), and
        beside it ``lr_schedule.csv`` (every batch's rate of every layer group) and
        ``dynamics.csv`` (each watched valid image's probability of its true class per epoch)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        columns = HISTORY_COLUMNS + (["l1_loss"] if any("l1_loss" in r for r in self.rows) else [])
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.rows)
        with (path.parent / TRAINING.lr_schedule).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["phase", "epoch", "step", "group", "lr"])
            step = 0
            for r in self.rows:
                for rates in r.get("rates", []):
                    w.writerows([r["phase"], r["epoch"], step, g, lr] for g, lr in rates.items())
                    step += 1
        with (path.parent / TRAINING.dynamics).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["phase", "epoch", "image", "path", "label", "p_true"])
            for r in self.rows:
                if self.watch is not None and "watched" in r:
                    w.writerows([r["phase"], r["epoch"], i, p, y, q]
                                for i, p, y, q in zip(self.watch.index, self.watch.paths, self.watch.labels, r["watched"]))


def train_phase(module, *, name: str, history: History, resume_dir: Path, key: str,
                snapshot: Callable[[int], None] | None = None, snapshot_at: tuple[int, ...] = (),
                **kwargs) -> list[dict]:
    """One resumable fit() whose epochs continue the stage's numbering. New epochs are logged as
    they end; epochs restored from a resume state were logged by the run that trained them.
    ``snapshot(epoch)`` is called with the stage's epoch number after each phase epoch in
    ``snapshot_at`` (the weights at that epoch's end: SGDR's cycle ends)."""
    offset = len(history.rows)

    def on_epoch(row: dict) -> None:
        if history.log is not None:
            history.log({k: v for k, v in row.items() if k != "epoch"}, offset + row["epoch"])
        if snapshot is not None and row["epoch"] in snapshot_at:
            snapshot(offset + row["epoch"])

    start = None
    if kwargs.get("keep") == "best":
        start = validate(module, kwargs["valid"], loss_fn=kwargs["loss_fn"], amp=kwargs.get("amp", False))["loss"]
    rows = fit(module, phase=name, resume=resume_dir / f"{name}.pt", fingerprint=key, on_epoch=on_epoch,
               start_loss=start, watch=history.watch.index if history.watch else None, **kwargs)
    history.rows += [{"phase": name, **r, "epoch": offset + r["epoch"]} for r in rows]
    return rows


def finish(model: Classifier, data: Data, common: Common, device, *, out: Path, history: History,
            history_csv: Path, size: int, stage: str, resume_dir: Path, t0: float, model_config: dict | None = None) -> dict:
    result = validate(model, common.batches(data.valid, device, train=False),
                      loss_fn=common.loss(multi_label=data.multi_label), amp=common.train.amp)
    metrics = {"valid_loss": result["loss"], "valid_accuracy": result["accuracy"], "epochs": len(history.rows),
               "size": size, "time_s": round(time.perf_counter() - t0, 1)}
    if distributed.world_size() > 1:
        metrics["processes"] = distributed.world_size()
    if not distributed.is_main():  # rank 0 writes the stage's files
        return metrics
    save_checkpoint(out, model, classes=data.classes, size=size, model_config=model_config or common.model.model_dump(),
                    stage=stage, epoch=len(history.rows), channels=data.train.images.shape[1],
                    multi_label=data.multi_label)
    history.write(history_csv)
    plots.history(history.rows, history_csv.with_name(TRAINING.history_plot), f"{stage} at {size} px")
    plots.lr_schedule(history.rows, history_csv.with_name(TRAINING.lr_schedule_plot), f"{stage}: learning rate per batch")
    shutil.rmtree(resume_dir, ignore_errors=True)  # finished: a rerun starts over
    return metrics



class MultiLabelLoss(nn.Module):
    """Binary cross-entropy on each label's logit, averaged over labels and images (several labels
    per image). ``smoothing`` moves each 0/1 target ``smoothing / 2`` toward 1/2. Targets may be
    soft (a mixup blend)."""

    def __init__(self, smoothing: float = 0.0):
        super().__init__()
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.float() * (1 - self.smoothing) + self.smoothing / 2
        return nn.functional.binary_cross_entropy_with_logits(logits, targets)


def class_weights(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """n / (present classes * count) per class, as sklearn's ``class_weight="balanced"`` (0 for a
    class with no image: it has no loss to weigh)."""
    counts = torch.bincount(torch.as_tensor(labels).long().flatten(), minlength=classes).double()
    present = int((counts > 0).sum())
    w = torch.where(counts > 0, counts.sum() / (present * counts.clamp_min(1)), torch.zeros_like(counts))
    return w.float()


@dataclass
class Learner:
    """One training stage's context, in one place (fastai's ``Learner``): its config sections,
    device, model, data, loss, the stage's folder (``out``: its model.pt), the image size, the
    history of its phases and its resume state. train_head, finetune and resize build one, run
    :meth:`phase` once per phase and end with :meth:`finish`: what they share is written here once.
    """
    common: Common
    device: torch.device
    model: Classifier
    data: Data
    stage: str
    out: Path  # the stage's model.pt; its folder holds the rest (recipe.core.layout.TRAINING)
    size: int
    history: History
    key: str  # the resume fingerprint: a resume state from other settings is not used
    model_config: dict | None = None  # a checkpoint's, for stages that start from one

    @property
    def folder(self) -> Path:
        return self.out.parent

    @property
    def resume(self) -> Path:
        return self.folder / TRAINING.resume

    def batches(self, images, *, train: bool, augment: bool = True, sampled: bool = False):
        return self.common.batches(images, self.device, train=train, augment=augment, sampled=sampled)

    def clear_snapshots(self) -> None:
        """A fresh run (no resume state) starts with no snapshots: see :func:`clear_snapshots`."""
        clear_snapshots(self.folder / TRAINING.snapshots, self.resume)

    def phase(self, name: str, *, train, epochs: int, lrs: list[float], schedule: dict, module=None, valid=None,
              train_mode: Callable[[], None] | None = None, stopping: dict | None = None,
              snapshots: bool = False) -> list[dict]:
        """``epochs`` of ``module`` (default: the model) on ``train`` at ``lrs`` (one per layer group,
        through Common.optimizer) under ``schedule``; valid batches by default the valid split's;
        early stopping by ``stopping`` (default: train.patience and train.keep); with ``snapshots``
        the weights at each SGDR cycle's end go to the folder's snapshots/."""
        opt = self.common.optimizer(self.model, lrs)
        sched = make_schedule(opt, epochs=epochs, steps_per_epoch=len(train), **schedule)
        ends = tuple(cycle_ends(schedule, epochs))  # SGDR's restarts; () for every other schedule
        snaps = {}
        if snapshots:
            snaps = dict(snapshot=snapshotter(self.model, self.data, folder=self.folder / TRAINING.snapshots,
                                              size=self.size, stage=self.stage, model_config=self.model_config),
                         snapshot_at=ends)
        train_cfg = self.common.train
        # train.ema: the moving average of the weights is one more candidate, <stage>@ema, wherever
        # the phase keeps SGDR snapshots (finetune, resize's unfrozen phase)
        average = moving_average(self.model, epochs=train_cfg.ema, steps_per_epoch=len(train)) \
            if snapshots and train_cfg.ema else None
        stopping = stopping if stopping is not None else {"patience": train_cfg.patience, "keep": train_cfg.keep}
        if stopping.get("patience") is not None and train_cfg.stop_at in ("cycle_end", "cycle") and ends:
            # SGDR: judged at its restarts; cycle: only once a whole cycle brought nothing
            stopping = {**stopping, "stop_at": ends, "whole_cycles": train_cfg.stop_at == "cycle"}
        extra = {"train_mode": train_mode} if train_mode is not None else {}
        rows = train_phase(module if module is not None else self.model, name=name, **snaps, train=train,
                           valid=valid if valid is not None else self.batches(self.data.valid, train=False),
                           epochs=epochs, optimizer=opt, schedule=sched, **extra,
                           loss_fn=self.common.loss(self.data.train.labels, len(self.data.classes),
                                                    multi_label=self.data.multi_label).to(self.device),
                           amp=train_cfg.amp, clip_grad=train_cfg.clip_grad, **stopping, history=self.history,
                           resume_dir=self.resume, key=self.key, average=average)
        if average is not None and distributed.is_main():
            save_checkpoint(self.folder / TRAINING.snapshots / TRAINING.ema, average.module, classes=self.data.classes,
                            size=self.size, model_config=self.model_config or self.common.model.model_dump(),
                            stage=f"{self.stage}@ema", epoch=len(self.history.rows),
                            channels=self.data.train.images.shape[1], multi_label=self.data.multi_label)
        return rows

    def finish(self, history_csv: Path, t0: float) -> dict:
        """Score on valid, write the checkpoint, the history and its pictures (see :func:`finish`)."""
        return finish(self.model, self.data, self.common, self.device, out=self.out, history=self.history,
                      history_csv=history_csv, size=self.size, stage=self.stage, resume_dir=self.resume, t0=t0,
                      model_config=self.model_config)


def snapshotter(model: Classifier, data: Data, *, folder: Path, size: int, stage: str,
                model_config: dict) -> Callable[[int], None]:
    """``snapshot(epoch)`` for :func:`train_phase`: the weights as ``folder/epoch_<n>.pt``, a
    stage checkpoint named ``<stage>@<n>`` (n: the stage's epoch, as history.csv numbers it)."""
    def snapshot(epoch: int) -> None:
        if distributed.is_main():
            save_checkpoint(folder / f"epoch_{epoch}.pt", model, classes=data.classes, size=size,
                            model_config=model_config, stage=f"{stage}@{epoch}", epoch=epoch,
                            channels=data.train.images.shape[1], multi_label=data.multi_label)
    return snapshot


def clear_snapshots(folder: Path, resume_dir: Path) -> None:
    """A fresh run (no resume state) starts with no snapshots: stale ones would pass as this run's."""
    if distributed.is_main() and not Path(resume_dir).exists():
        shutil.rmtree(folder, ignore_errors=True)
    if distributed.is_main():
        Path(folder).mkdir(parents=True, exist_ok=True)


def resolve_lr(lr: float | str, suggestion: Path | None, key: str) -> float:
    if lr != "auto":
        return float(lr)
    if suggestion is None or not Path(suggestion).is_file():
        raise ConfigError(f"{key} = 'auto' needs lr_find's suggestion.json, which is missing (run lr_find)")
    return float(json.loads(Path(suggestion).read_text())["lr"])



def fit_set(data: Data, fit_on: str, common: Common, stage: str) -> tuple[ImageSet, dict]:
    """The images an unfrozen stage trains on, with the early-stopping settings that suit them.

    ``train+valid`` is the final fit (on ELPV's 60/15/25 split, 25% more training
    images): the valid loss is then measured on images the model trains on, so it cannot pick an
    epoch or stop the run; the schedule runs to its end and the last epoch is kept."""
    if fit_on == "train":
        return data.train, {"patience": common.train.patience, "keep": common.train.keep}
    print(f"{stage}: fit on train + valid ({len(data.train)} + {len(data.valid)} images); the valid columns are "
          "not held out, so no early stopping and the last epoch is kept")
    return data.train + data.valid, {"patience": None, "keep": "last"}



def same_classes(meta: dict, data: Data, checkpoint: Path) -> None:
    if list(meta["classes"]) != data.classes:
        raise DataError(f"{checkpoint}: trained on classes {meta['classes']}, the split has {data.classes}")

