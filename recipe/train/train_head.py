"""train_head: a new head on the frozen pretrained body.

First ``precompute_epochs`` on body features computed once (eval mode, no augmentation: fast.ai's
``precompute=True``, an epoch costs milliseconds), then ``epochs`` through the frozen body with
augmentation. ``lr: auto`` takes lr_find's suggestion.
"""
from __future__ import annotations

import time
from pathlib import Path

from recipe.core.layout import TRAINING
from recipe.train.models import freeze_to, set_bn_mode
from recipe.train.optim import make_schedule
from recipe.train.schema import TrainHeadConfig
from recipe.train.session import batches, features, fingerprint, load_data
from recipe.train.training import Common, History, Log, finish, pretrained, resolve_lr, train_phase, watch


def run(common: Common, cfg: TrainHeadConfig, *, split: Path, raw: Path, suggestion: Path, out: Path,
        history_csv: Path, log: Log | None = None) -> dict:
    """Train a new head on the frozen body; write the checkpoint, history and picture; return metrics."""
    t0 = time.perf_counter()
    lr = resolve_lr(cfg.lr, suggestion, "train_head.lr")
    device = common.start()
    data = load_data(split, raw, size=common.train.image_size, workers=common.train.workers)
    model = pretrained(common, data, device)
    train_bn = cfg.bn == "train"
    freeze_to(model, model.head_group, train_bn=train_bn)
    resume = out.parent / TRAINING.resume
    key = fingerprint("train_head", cfg, common, lr, files=(split,))
    history = History(log, watch(data.valid, common.train.dynamics_images, common.seed))
    loss_fn = common.loss()
    kw = dict(loss_fn=loss_fn, amp=common.train.amp, clip_grad=common.train.clip_grad,
              patience=common.train.patience, keep=common.train.keep, history=history, resume_dir=resume, key=key)
    if cfg.precompute_epochs:
        # Body features once (eval mode, no augmentation); then each head epoch costs milliseconds.
        ft = features(model, common.batches(data.train, device, train=False), amp=common.train.amp)
        fv = features(model, common.batches(data.valid, device, train=False), amp=common.train.amp)
        tb = batches((ft, data.train.training_targets), batch_size=common.train.batch_size, train=True, seed=common.seed, device=device)
        vb = batches((fv, data.valid.labels), batch_size=common.train.batch_size, train=False, seed=common.seed, device=device)
        opt = common.optimizer(model, [lr] * len(model.groups))
        sched = make_schedule(opt, epochs=cfg.precompute_epochs, steps_per_epoch=len(tb), **cfg.schedule.model_dump())
        train_phase(model.head, name="precomputed", train=tb, valid=vb, epochs=cfg.precompute_epochs,
                     optimizer=opt, schedule=sched, **kw)
    if cfg.epochs:
        tb = common.batches(data.train, device, train=True)
        opt = common.optimizer(model, [lr] * len(model.groups))
        sched = make_schedule(opt, epochs=cfg.epochs, steps_per_epoch=len(tb), **cfg.schedule.model_dump())
        train_phase(model, name="augmented", train=tb, valid=common.batches(data.valid, device, train=False),
                     epochs=cfg.epochs, optimizer=opt, schedule=sched,
                     train_mode=lambda: set_bn_mode(model, policy=cfg.bn, first_trainable=model.head_group), **kw)
    # lr_used: the rate the optimizer got, lr times optim.lr_scaling's factor (Common.optimizer)
    return {"lr": lr, "lr_scale": common.lr_scale(), "lr_used": lr * common.lr_scale(), "train_images": len(data.train),
            **finish(model, data, common, device, out=out, history=history, history_csv=history_csv,
                     size=common.train.image_size, stage="train_head", resume_dir=resume, t0=t0)}
