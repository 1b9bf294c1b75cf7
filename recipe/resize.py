"""resize: progressive resizing, the fine-tuned model trained on at a larger image size.

An optional frozen phase (``head_epochs`` at ``head_lr``, the head alone) then an unfrozen one
(down to finetune's ``unfreeze_to``, discriminative rates, SGDR). ``refresh_bn`` re-estimates
the BatchNorm statistics at the new size first.
"""
from __future__ import annotations

import time
from pathlib import Path

from recipe.fit import validate
from recipe.models import freeze_to, set_bn_mode, spread_lrs
from recipe.optim import make_schedule
from recipe.schema import ResizeConfig
from recipe.session import fingerprint, load_checkpoint, load_data, refresh_bn
from recipe.training import Common, History, Log, finish, fit_set, same_classes, train_phase


def run(common: Common, cfg: ResizeConfig, *, unfreeze_to: int, split: Path, raw: Path, checkpoint: Path,
        out: Path, history_csv: Path, log: Log | None = None) -> dict:
    """Train the checkpoint on at ``cfg.size`` (or its size times ``cfg.factor``)."""
    t0 = time.perf_counter()
    device = common.start()
    model, meta = load_checkpoint(checkpoint)
    model = common.prepare(model, device)
    size = cfg.size if cfg.size is not None else int(round(meta["size"] * cfg.factor))
    data = load_data(split, raw, size=size, workers=common.train.workers)
    same_classes(meta, data, checkpoint)
    metrics: dict[str, object] = {"from_size": meta["size"]}
    plain = common.batches(data.valid, device, train=False)
    before = validate(model, plain, loss_fn=common.loss(), amp=common.train.amp)
    metrics["valid_accuracy_before"] = before["accuracy"]
    if cfg.refresh_bn:
        metrics["bn_layers_refreshed"] = refresh_bn(model, common.batches(data.train, device, train=False))
        metrics["valid_accuracy_after_bn_refresh"] = validate(model, plain, loss_fn=common.loss(),
                                                              amp=common.train.amp)["accuracy"]
    resume = out.parent / "resume"
    history = History(log)
    train_set, stopping = fit_set(data, cfg.fit_on, common, "resize")
    metrics.update(fit_on=cfg.fit_on, train_images=len(train_set))
    tb = common.batches(train_set, device, train=True)
    key = fingerprint("resize", cfg, common, unfreeze_to, files=(split, checkpoint))
    kw = dict(train=tb, valid=plain, loss_fn=common.loss(), amp=common.train.amp, clip_grad=common.train.clip_grad,
              **stopping, history=history, resume_dir=resume, key=key)
    for name, epochs, first, lrs in (("frozen", cfg.head_epochs, model.head_group, [cfg.head_lr] * len(model.groups)),
                                     ("unfrozen", cfg.epochs, unfreeze_to, spread_lrs(cfg.lr, cfg.lr_mult, len(model.groups)))):
        if not epochs:
            continue
        freeze_to(model, first, train_bn=cfg.bn == "train")
        opt = common.optimizer(model, lrs)
        sched = make_schedule(opt, epochs=epochs, steps_per_epoch=len(tb), **cfg.schedule.model_dump())
        train_phase(model, name=name, epochs=epochs, optimizer=opt, schedule=sched,
                     train_mode=lambda first=first: set_bn_mode(model, policy=cfg.bn, first_trainable=first), **kw)
    return {**metrics, **finish(model, data, common, device, out=out, history=history, history_csv=history_csv,
                                 size=size, stage="resize", resume_dir=resume, t0=t0, model_config=meta["model_config"])}
