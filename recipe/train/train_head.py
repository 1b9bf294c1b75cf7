"""train_head: a new head on the frozen pretrained body.

First ``precompute_epochs`` on body features computed once (eval mode, no augmentation: fast.ai's
``precompute=True``, an epoch costs milliseconds), then ``epochs`` through the frozen body with
augmentation. ``lr: auto`` takes lr_find's suggestion.
"""
from __future__ import annotations

import time
from pathlib import Path

from recipe.train.learner import Common, History, Learner, Log, pretrained, resolve_lr, watch
from recipe.train.models import freeze_to, set_bn_mode
from recipe.train.schema import TrainHeadConfig
from recipe.train.session import batches, features, fingerprint, load_data


def run(common: Common, cfg: TrainHeadConfig, *, split: Path, raw: Path, suggestion: Path, out: Path,
        history_csv: Path, log: Log | None = None) -> dict:
    """Train a new head on the frozen body; write the checkpoint, history and picture; return metrics."""
    t0 = time.perf_counter()
    lr = resolve_lr(cfg.lr, suggestion, "train_head.lr")
    device = common.start()
    data = load_data(split, raw, size=common.train.image_size, workers=common.train.workers)
    model = pretrained(common, data, device)
    freeze_to(model, model.head_group, train_bn=cfg.bn == "train")
    learn = Learner(common, device, model, data, stage="train_head", out=out, size=common.train.image_size,
                    history=History(log, watch(data.valid, common.train.dynamics_images, common.seed)),
                    key=fingerprint("train_head", cfg, common, lr, files=(split,)))
    lrs, schedule = [lr] * len(model.groups), cfg.schedule.model_dump()
    if cfg.precompute_epochs:
        # Body features once (eval mode, no augmentation); then each head epoch costs milliseconds.
        ft = features(model, learn.batches(data.train, train=False), amp=common.train.amp)
        fv = features(model, learn.batches(data.valid, train=False), amp=common.train.amp)
        tb = batches((ft, data.train.training_targets), batch_size=common.train.batch_size, train=True, seed=common.seed,
                     device=device, balance=common.balance(data.train))
        vb = batches((fv, data.valid.labels), batch_size=common.train.batch_size, train=False, seed=common.seed, device=device)
        learn.phase("precomputed", module=model.head, train=tb, valid=vb, epochs=cfg.precompute_epochs, lrs=lrs,
                    schedule=schedule)
    if cfg.epochs:
        learn.phase("augmented", train=learn.batches(data.train, train=True, sampled=True), epochs=cfg.epochs, lrs=lrs, schedule=schedule,
                    train_mode=lambda: set_bn_mode(model, policy=cfg.bn, first_trainable=model.head_group))
    # lr_used: the rate the optimizer got, lr times optim.lr_scaling's factor (Common.optimizer)
    return {"lr": lr, "lr_scale": common.lr_scale(), "lr_used": lr * common.lr_scale(), "train_images": len(data.train),
            **learn.finish(history_csv, t0)}
