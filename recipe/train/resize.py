"""resize: progressive resizing, the fine-tuned model trained on at a larger image size.

An optional frozen phase (``head_epochs`` at ``head_lr``, the head alone) then an unfrozen one
(down to finetune's ``unfreeze_to``, discriminative rates, SGDR). ``refresh_bn`` re-estimates
the BatchNorm statistics at the new size first.

The stage never hands on a model worse than the one it was given: the given model's valid loss
at its own size (where select would score it) is the bar, and a resized model that does not beat
it is dropped for the given one (``passed_on`` in the metrics). ``size: auto`` (recipe.data.sizes)
with nothing larger to grow into skips training and passes the given model on as well.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from recipe.core import distributed
from recipe.core.layout import TRAINING
from recipe.data.sizes import median_side, resize_size
from recipe.report import plots
from recipe.train.fit import validate
from recipe.train.learner import (
    Common,
    History,
    Learner,
    Log,
    clear_snapshots,
    fit_set,
    same_classes,
    watch,
)
from recipe.train.models import freeze_to, set_bn_mode, spread_lrs
from recipe.train.schema import ResizeConfig, TrainConfig
from recipe.train.session import fingerprint, load_checkpoint, load_data, refresh_bn


def target_size(cfg: ResizeConfig, train: TrainConfig, *, from_size: int, split: Path) -> int | None:
    """The size resize trains at; None when ``auto`` finds nothing larger than ``from_size``."""
    side = median_side(split) if cfg.image_size == "auto" else 0.0
    return resize_size(cfg.image_size, cfg.factor, from_size=from_size, side=side, high=train.auto_size.resize_max)


def run(common: Common, cfg: ResizeConfig, *, unfreeze_to: int, split: Path, raw: Path, checkpoint: Path,
        out: Path, history_csv: Path, log: Log | None = None) -> dict:
    """Train the checkpoint on at ``cfg.image_size`` (or its size times ``cfg.factor``)."""
    t0 = time.perf_counter()
    device = common.start()
    model, meta = load_checkpoint(checkpoint)
    model = common.prepare(model, device)
    resume = out.parent / TRAINING.resume
    clear_snapshots(out.parent / TRAINING.snapshots, resume)
    size = target_size(cfg, common.train, from_size=meta["size"], split=split)
    given = load_data(split, raw, size=meta["size"], workers=common.train.workers)
    same_classes(meta, given, checkpoint)
    loss = common.loss(multi_label=given.multi_label)
    bar = validate(model, common.batches(given.valid, device, train=False), loss_fn=loss, amp=common.train.amp)
    metrics: dict[str, object] = {"from_size": meta["size"], "given_valid_loss": bar["loss"],
                                  "given_valid_accuracy": bar["accuracy"]}
    if size is None:
        print(f"resize: size auto: the images' median shorter side ({median_side(split):g} px) is no larger than "
              f"{meta['size']} px; nothing to grow into, the given model is passed on")
        return {**metrics, **_pass_on(checkpoint, out, history_csv, bar, meta["size"], t0,
                                      "size auto: nothing larger than the given size")}
    data = load_data(split, raw, size=size, workers=common.train.workers)
    plain = common.batches(data.valid, device, train=False)
    before = validate(model, plain, loss_fn=loss, amp=common.train.amp)
    metrics["valid_accuracy_before"] = before["accuracy"]
    if cfg.refresh_bn:
        metrics["bn_layers_refreshed"] = refresh_bn(model, common.batches(data.train, device, train=False))
        metrics["valid_accuracy_after_bn_refresh"] = validate(model, plain, loss_fn=loss,
                                                              amp=common.train.amp)["accuracy"]
    history = History(log, watch(data.valid, common.train.dynamics_images, common.seed))
    train_set, stopping = fit_set(data, cfg.fit_on, common, "resize")
    metrics.update(fit_on=cfg.fit_on, train_images=len(train_set), lr_scale=common.lr_scale(),  # Common.optimizer's
                   head_lr_used=cfg.head_lr * common.lr_scale(), lr_used=cfg.lr * common.lr_scale())  # factor
    tb = common.batches(train_set, device, train=True, sampled=True)
    learn = Learner(common, device, model, data, stage="resize", out=out, size=size, history=history,
                    key=fingerprint("resize", cfg, common, unfreeze_to, files=(split, checkpoint)),
                    model_config=meta["model_config"])
    for name, epochs, first, lrs in (("frozen", cfg.head_epochs, model.head_group, [cfg.head_lr] * len(model.groups)),
                                     ("unfrozen", cfg.epochs, unfreeze_to, spread_lrs(cfg.lr, cfg.lr_mult, len(model.groups)))):
        if not epochs:
            continue
        freeze_to(model, first, train_bn=cfg.bn == "train")
        learn.phase(name, train=tb, valid=plain, epochs=epochs, lrs=lrs, schedule=cfg.schedule.model_dump(),
                    train_mode=lambda first=first: set_bn_mode(model, policy=cfg.bn, first_trainable=first),
                    stopping=stopping, snapshots=cfg.snapshots and name == "unfrozen")
    result = learn.finish(history_csv, t0)
    if cfg.fit_on == "train" and result["valid_loss"] >= bar["loss"]:
        print(f"resize: valid loss {result['valid_loss']:.4f} at {size} px does not beat the given model's "
              f"{bar['loss']:.4f} at {meta['size']} px; the given model is passed on")
        result.update(_pass_on(checkpoint, out, None, bar, meta["size"], t0,
                               f"did not beat the given model on valid at {size} px", resized=result))
    return {**metrics, **result}


def _pass_on(checkpoint: Path, out: Path, history_csv: Path | None, bar: dict, size: int, t0: float, why: str,
             resized: dict | None = None) -> dict:
    """The given checkpoint as this stage's output, and the metrics that say so."""
    if distributed.is_main():
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(checkpoint, out)
        if history_csv is not None:  # no training: an empty history and its picture
            History(None).write(history_csv)
            plots.history([], history_csv.with_name(TRAINING.history_plot), f"resize: skipped ({why})")
            plots.lr_schedule([], history_csv.with_name(TRAINING.lr_schedule_plot), f"resize: skipped ({why})")
    m = {"passed_on": why, "valid_loss": bar["loss"], "valid_accuracy": bar["accuracy"], "size": size,
         "time_s": round(time.perf_counter() - t0, 1)}
    if resized is not None:
        m.update(resized_valid_loss=resized["valid_loss"], resized_valid_accuracy=resized["valid_accuracy"],
                 resized_size=resized.get("size"), epochs=resized["epochs"])
    else:
        m["epochs"] = 0
    return m
