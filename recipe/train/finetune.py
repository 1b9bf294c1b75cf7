"""finetune: every layer group from ``unfreeze_to`` on trainable, discriminative rates, SGDR.

Rates spread geometrically from ``lr / lr_mult`` (earliest trainable group) to ``lr`` (head);
``lr: auto`` runs the range test on the unfrozen model first, keeping the groups' ratios
(its curve goes to ``lr_find_dir``; under DDP rank 0 alone runs it, see :func:`auto_lr`).
``fit_on: train+valid`` is the final fit (see :func:`recipe.train.learner.fit_set`).
"""
from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path
from typing import Callable

from recipe.core import distributed
from recipe.core.layout import LR_FIND
from recipe.data.loader import Batches
from recipe.train import lr_find
from recipe.train.learner import (
    Common,
    History,
    Learner,
    Log,
    fit_set,
    same_classes,
    watch,
)
from recipe.train.models import Classifier, freeze_to, set_bn_mode, spread_lrs
from recipe.train.schema import FinetuneConfig, LrFindConfig
from recipe.train.session import fingerprint, load_checkpoint, load_data


def unfreeze_rule(setting: int | str, *, groups: int, head_valid: float | None, pixels_valid: float | None,
                  margin: float, epochs: int, whole_body_epochs: int | None) -> tuple[int, int, str]:
    """How deep finetune unfreezes and for how many epochs: ``setting`` and ``epochs`` when the
    depth is a number; with ``auto``, from how well the pretrained features fit the data, read on
    valid: when the head trained on the frozen features (train_head) beats logistic regression on
    the raw pixels (the baseline stage's) by more than ``margin`` in accuracy, the features fit
    and the late body (group ``groups - 2``) trains for ``epochs``; when it does not, they do not
    fit (ELPV's features do, the digits' do not), the whole body (group 0) has to learn the
    data's features and trains for ``whole_body_epochs`` (None: ``epochs``). Returns the first
    trainable group, the epochs and the reason, in words."""
    late = max(groups - 2, 0)
    if setting != "auto":
        return int(setting), epochs, "pinned (finetune.unfreeze_to)"
    if head_valid is None or pixels_valid is None:
        return late, epochs, "auto, with no pixels baseline to compare the head with: the late body"
    said = f"train_head {100 * head_valid:.2f}% against logistic regression on the pixels {100 * pixels_valid:.2f}% on valid"
    if head_valid - pixels_valid > margin:
        return late, epochs, f"auto: {said}: the pretrained features fit, the late body trains"
    longer = epochs if whole_body_epochs is None else whole_body_epochs
    return 0, longer, (f"auto: {said} (margin {margin:g}): the pretrained features do not fit, the whole body "
                       f"trains for {longer} epochs")


def run(common: Common, cfg: FinetuneConfig, lr_find_cfg: LrFindConfig, *, split: Path, raw: Path, checkpoint: Path,
        out: Path, history_csv: Path, lr_find_dir: Path, log: Log | None = None, head_valid: float | None = None,
        pixels_valid: float | None = None) -> dict:
    """Fine-tune the checkpoint unfrozen down to ``cfg.unfreeze_to`` for ``cfg.epochs`` (both by
    :func:`unfreeze_rule` with ``auto``, from ``head_valid`` and ``pixels_valid``); write and
    return as train_head."""
    t0 = time.perf_counter()
    device = common.start()
    model, meta = load_checkpoint(checkpoint)
    model = common.prepare(model, device)
    unfreeze, epochs, why = unfreeze_rule(cfg.unfreeze_to, groups=len(model.groups), head_valid=head_valid,
                                          pixels_valid=pixels_valid, margin=cfg.unfreeze_margin, epochs=cfg.epochs,
                                          whole_body_epochs=cfg.whole_body_epochs)
    print(f"finetune: unfreeze_to {unfreeze} ({', '.join(model.group_names[unfreeze:])}), {epochs} epochs: {why}")
    cfg = cfg.model_copy(update={"unfreeze_to": unfreeze, "epochs": epochs})
    data = load_data(split, raw, size=meta["size"], workers=common.train.workers)
    same_classes(meta, data, checkpoint)
    freeze_to(model, cfg.unfreeze_to, train_bn=cfg.bn == "train")
    train_mode = lambda: set_bn_mode(model, policy=cfg.bn, first_trainable=cfg.unfreeze_to)
    train_set, stopping = fit_set(data, cfg.fit_on, common, "finetune")
    tb = common.batches(train_set, device, train=True, sampled=True)
    lr = cfg.lr
    if distributed.is_main():  # a curve left by an earlier lr: auto run would pass for this run's
        shutil.rmtree(lr_find_dir, ignore_errors=True)
    if lr == "auto":  # the range test on the unfrozen model, keeping the groups' ratios
        lr = distributed.on_main(lambda: auto_lr(model, common, lr_find_cfg, tb, cfg.lr_mult, train_mode, lr_find_dir,
                                                 multi_label=data.multi_label))
    lrs = spread_lrs(lr, cfg.lr_mult, len(model.groups))
    learn = Learner(common, device, model, data, stage="finetune", out=out, size=meta["size"],
                    history=History(log, watch(data.valid, common.train.dynamics_images, common.seed)),
                    key=fingerprint("finetune", cfg, common, lr, files=(split, checkpoint)), model_config=meta["model_config"])
    learn.clear_snapshots()
    learn.phase("unfrozen", train=tb, epochs=cfg.epochs, lrs=lrs, schedule=cfg.schedule.model_dump(), train_mode=train_mode,
                stopping=stopping, snapshots=cfg.snapshots)  # snapshots: the weights at each SGDR cycle's end
    return {"lr": lr, "lrs": lrs, "lr_scale": common.lr_scale(), "lrs_used": [x * common.lr_scale() for x in lrs],
            "fit_on": cfg.fit_on, "train_images": len(train_set), "unfreeze_to": unfreeze, "unfreeze_rule": why,
            **learn.finish(history_csv, t0)}


def auto_lr(model: Classifier, common: Common, cfg: LrFindConfig, train: Batches, lr_mult: float,
            train_mode: Callable[[], None], out_dir: Path, *, multi_label: bool) -> float:
    """The range test's rate for the unfrozen model; its curve, picture and suggestion go to
    ``out_dir``. Under DDP rank 0 alone calls this (distributed.on_main): it sweeps the whole global
    batches, not its slice, so the curve and the rate are the ones a single process gets."""
    whole = copy.copy(train)
    whole.shard = None
    result = lr_find.sweep(model, model, common, cfg, whole, spread_lrs(1.0, lr_mult, len(model.groups)), train_mode,
                           multi_label=multi_label)
    lr_find.write(result, cfg.suggestion, curve_csv=out_dir / LR_FIND.curve, plot=out_dir / LR_FIND.plot,
                  suggestion=out_dir / LR_FIND.suggestion)
    return result["summary"]["lr"]
