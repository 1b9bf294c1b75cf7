"""The model stages of the recipe as functions: baseline, lr_find, train_head, finetune, resize, evaluate.

Contract: each function takes its validated config sections and file paths as keyword
arguments, writes its outputs, and returns its metrics (a JSON-ready dict). ``log(row, step)``
receives every epoch's numbers (step = the epoch within the stage) so the caller can send them
to MLflow; nothing here imports MLflow. Stage scripts in ``stages/`` are the wiring around these.
"""
from __future__ import annotations

import csv
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recipe import distributed, plots
from recipe import evaluate as ev
from recipe.augment import Augment
from recipe.baseline import SimpleNet, check_init_loss, check_overfit, check_zero_input, prior_entropy
from recipe.errors import ConfigError, DataError, RecipeError
from recipe.data.loader import ImageSet, class_names, load_split, read_split
from recipe.fit import autocast, evaluate, fit
from recipe.lr_find import range_test, suggest
from recipe.models import Classifier, freeze_to, param_groups, set_bn_mode, spread_lrs
from recipe.optim import make_optimizer, make_schedule
from recipe.session import (Data, batches, features, fingerprint, load_checkpoint, load_data, new_model,
                            pick_device, refresh_bn, save_checkpoint, seed_everything)

Log = Callable[[dict, int], None]
HEAD = 2  # index of the head among the layer groups (early, late, head)


class CheckFailed(RecipeError):
    pass


@dataclass(frozen=True)
class Common:
    """The sections every model stage reads."""
    seed: int
    train: Any  # TrainConfig
    model: Any  # ModelConfig
    optim: Any  # OptimConfig
    augment: Any  # AugmentConfig

    def start(self) -> torch.device:
        """Seeds, the device, and under torchrun the process group (recipe.distributed)."""
        seed_everything(self.seed)
        return distributed.init(pick_device(self.train.device))

    def loss(self) -> nn.Module:
        return nn.CrossEntropyLoss(label_smoothing=self.train.label_smoothing)

    def augmenter(self) -> Augment:
        return Augment(**self.augment.model_dump())

    def batches(self, images, device, *, train: bool, augment: bool = True):
        return batches(images, batch_size=self.train.batch_size, train=train, seed=self.seed, device=device,
                       augment=self.augmenter() if augment else None, channels_last=self.train.channels_last)

    def optimizer(self, model: Classifier, lrs: list[float]) -> torch.optim.Optimizer:
        cfg = self.optim.model_dump()
        groups = param_groups(model, lrs, weight_decay=cfg.pop("weight_decay"),
                              bn_weight_decay=cfg.pop("bn_weight_decay"))
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
    model = common.prepare(new_model(common.model, data.classes, data.priors), device)
    if common.model.adapt_bn:
        refresh_bn(model, common.batches(data.train, device, train=False))
    return model


class History:
    """Epoch rows of one stage across its phases, numbered on from phase to phase."""

    def __init__(self, log: Log | None):
        self.rows: list[dict] = []
        self.log = log

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["phase", "epoch", "train_loss", "valid_loss", "accuracy", "lr", "time"])
            w.writeheader()
            w.writerows(self.rows)


def _train_phase(module, *, name: str, history: History, resume_dir: Path, key: str, **kwargs) -> list[dict]:
    """One resumable fit() whose epochs continue the stage's numbering. New epochs are logged as
    they end; epochs restored from a resume state were logged by the run that trained them."""
    offset = len(history.rows)

    def on_epoch(row: dict) -> None:
        if history.log is not None:
            history.log({k: v for k, v in row.items() if k != "epoch"}, offset + row["epoch"])

    start = None
    if kwargs.get("keep") == "best":
        start = evaluate(module, kwargs["valid"], loss_fn=kwargs["loss_fn"], amp=kwargs.get("amp", False))["loss"]
    rows = fit(module, phase=name, resume=resume_dir / f"{name}.pt", fingerprint=key, on_epoch=on_epoch,
               start_loss=start, **kwargs)
    history.rows += [{"phase": name, **r, "epoch": offset + r["epoch"]} for r in rows]
    return rows


def _finish(model: Classifier, data: Data, common: Common, device, *, out: Path, history: History,
            history_csv: Path, size: int, stage: str, resume_dir: Path, t0: float, model_config: dict | None = None) -> dict:
    result = evaluate(model, common.batches(data.valid, device, train=False), loss_fn=common.loss(),
                      amp=common.train.amp)
    metrics = {"valid_loss": result["loss"], "valid_accuracy": result["accuracy"], "epochs": len(history.rows),
               "size": size, "time_s": round(time.perf_counter() - t0, 1)}
    if distributed.world_size() > 1:
        metrics["processes"] = distributed.world_size()
    if not distributed.is_main():  # rank 0 writes the stage's files
        return metrics
    save_checkpoint(out, model, classes=data.classes, size=size, model_config=model_config or common.model.model_dump(),
                    stage=stage, epoch=len(history.rows), channels=data.train.images.shape[1])
    history.write(history_csv)
    plots.history(history.rows, history_csv.with_suffix(".png"), f"{stage} at {size} px")
    shutil.rmtree(resume_dir, ignore_errors=True)  # finished: a rerun starts over
    return metrics


# --- baseline -------------------------------------------------------------------------------

def baseline(common: Common, cfg: Any, *, split: Path, raw: Path, picture: Path) -> dict:
    t0 = time.perf_counter()
    device = common.start()
    data = load_data(split, raw, size=common.train.size, workers=common.train.workers)
    # The checks are about the pipeline, on the hard labels: one batch can overfit to a loss of
    # 0 only if its targets are one-hot.
    data.train.targets = None
    priors = data.priors
    model = pretrained(common, data, device)

    # What the network sees: one augmented training batch, after every transform.
    x, y = next(iter(common.batches(data.train, device, train=True).epoch(0)))
    k = min(cfg.picture_images, len(y))
    plots.tensor_grid(x[:k].float().cpu().numpy(), [data.classes[i] for i in y[:k].tolist()], picture,
                      f"A training batch as the network gets it ({common.train.size} px, after augmentation)")

    checks, numbers = [], {}
    plain_train = common.batches(data.train, device, train=False)
    # Shuffled (the split file may be ordered by class), not augmented.
    shuffled = common.batches(data.train, device, train=True, augment=False)
    check, n = check_init_loss(model, shuffled, batches=cfg.init_batches, priors=priors,
                               prior_bias=common.model.head.prior_bias, tolerance=cfg.init_tolerance)
    checks.append(check)
    numbers.update(n)

    # Input-independent baseline on cached features: real images vs all-zero images.
    f_train = features(model, plain_train)
    f_valid = features(model, common.batches(data.valid, device, train=False))
    zero = features(model, common.batches((torch.zeros_like(data.train.images[:1]), data.train.labels[:1]),
                                          device, train=False))
    feat = lambda f, labels, train: batches((f, labels), batch_size=common.train.batch_size, train=train,  # noqa: E731
                                            seed=common.seed, device=device)
    check, n = check_zero_input(
        model.head, feat(f_train, data.train.labels, True), feat(zero.expand(len(f_train), -1), data.train.labels, True),
        feat(f_valid, data.valid.labels, False), feat(zero.expand(len(f_valid), -1), data.valid.labels, False),
        steps=cfg.zero_input_steps, lr=cfg.simple.lr, margin=cfg.zero_input_margin)
    checks.append(check)
    numbers.update(n)

    # Majority class: the accuracy of always answering the most frequent training class.
    majority = int(torch.argmax(torch.tensor(priors)))
    numbers["majority_class"] = data.classes[majority]
    numbers["majority_accuracy"] = (data.valid.labels == majority).float().mean().item()

    # The simple model, from scratch, at a small size.
    numbers.update(_simple_model(common, cfg.simple, data, device))

    # Overfit one batch (last: it changes the model).
    gen = torch.Generator().manual_seed(common.seed)
    idx = torch.randperm(len(data.train), generator=gen)[: cfg.overfit.images]
    xb = data.train.images[idx].to(device).float().div(255)
    yb = data.train.labels[idx].to(device)
    checks.append(check_overfit(model, xb, yb, steps=cfg.overfit.steps, lr=cfg.overfit.lr,
                                max_loss=cfg.overfit.max_loss))
    numbers["overfit_loss"] = checks[-1].value
    metrics = {"checks": {c.name: c.as_dict() for c in checks}, **numbers,
               "classes": len(data.classes), "prior_entropy": prior_entropy(priors),
               "passed": all(c.passed for c in checks), "time_s": round(time.perf_counter() - t0, 1)}
    for c in checks:
        print(f"baseline: {'ok  ' if c.passed else 'FAIL'} {c.name}: {c.detail}")
    print(f"baseline: majority class {numbers['majority_class']!r} valid accuracy {numbers['majority_accuracy']:.4f}; "
          f"simple model valid accuracy {numbers['simple_accuracy']:.4f}")
    return metrics


def failed_checks(metrics: dict) -> list[str]:
    return [f"check {name} failed: {c['detail']}" for name, c in metrics["checks"].items() if not c["passed"]]


def _simple_model(common: Common, cfg: Any, data: Data, device) -> dict:
    def shrink(images: torch.Tensor) -> torch.Tensor:
        return F.interpolate(images.float(), size=(cfg.size, cfg.size), mode="bilinear", antialias=True,
                             align_corners=False).round().clamp(0, 255).to(torch.uint8)

    train = (shrink(data.train.images), data.train.labels)
    valid = (shrink(data.valid.images), data.valid.labels)
    net = SimpleNet(train[0].shape[1], len(data.classes), cfg.width).to(device)
    tb = common.batches(train, device, train=True)
    vb = common.batches(valid, device, train=False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr)
    sched = make_schedule(opt, epochs=cfg.epochs, steps_per_epoch=len(tb), **cfg.schedule.model_dump())
    rows = fit(net, train=tb, valid=vb, epochs=cfg.epochs, optimizer=opt, schedule=sched, loss_fn=common.loss(),
               keep="last", phase="simple model")
    return {"simple_accuracy": rows[-1]["accuracy"], "simple_valid_loss": rows[-1]["valid_loss"]}


# --- lr_find --------------------------------------------------------------------------------

def lr_find(common: Common, cfg: Any, *, lr_mult: float, unfreeze_to: int, bn: str, split: Path, raw: Path,
            curve_csv: Path, plot: Path, suggestion: Path) -> dict:
    t0 = time.perf_counter()
    device = common.start()
    data = load_data(split, raw, size=common.train.size, workers=common.train.workers)
    model = pretrained(common, data, device)
    if cfg.model == "head":
        freeze_to(model, HEAD)
        f = features(model, common.batches(data.train, device, train=False), amp=common.train.amp)
        train = batches((f, data.train.training_targets), batch_size=common.train.batch_size, train=True, seed=common.seed,
                        device=device)
        result = _range_test(model.head, model, common, cfg, train, [1.0, 1.0, 1.0], None)
    else:
        freeze_to(model, unfreeze_to)
        result = _range_test(model, model, common, cfg, common.batches(data.train, device, train=True),
                             spread_lrs(1.0, lr_mult, 3),
                             lambda: set_bn_mode(model, policy=bn, first_trainable=unfreeze_to))
    write_lr_find(result, cfg.suggestion, curve_csv=curve_csv, plot=plot, suggestion=suggestion)
    return {**result["summary"], "time_s": round(time.perf_counter() - t0, 1)}


def _range_test(module, model: Classifier, common: Common, cfg: Any, train, ratios: list[float], train_mode):
    opt = common.optimizer(model, ratios)
    curve = range_test(module, batches=train.epoch, optimizer=opt, loss_fn=common.loss(), start_lr=cfg.start_lr,
                       end_lr=cfg.end_lr, iterations=cfg.iterations, smoothing=cfg.smoothing, diverge=cfg.diverge,
                       train_mode=train_mode)
    try:
        rules = suggest(curve["lr"], curve["smoothed"], cfg.iterations)
    except ValueError as exc:
        raise DataError(f"lr_find: {exc} (the loss diverged at once? lower lr_find.start_lr)") from None
    chosen = rules[cfg.suggestion]
    summary = {"lr": chosen, "rule": cfg.suggestion, "suggestions": rules, "points": len(curve["lr"]),
               "stopped_early": len(curve["lr"]) < cfg.iterations, "min_loss": min(curve["smoothed"])}
    return {"curve": curve, "summary": summary}


def write_lr_find(result: dict, rule: str, *, curve_csv: Path, plot: Path, suggestion: Path) -> None:
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


def resolve_lr(lr: float | str, suggestion: Path | None, key: str) -> float:
    if lr != "auto":
        return float(lr)
    if suggestion is None or not Path(suggestion).is_file():
        raise ConfigError(f"{key} = 'auto' needs lr_find's suggestion.json, which is missing (run lr_find)")
    return float(json.loads(Path(suggestion).read_text())["lr"])


# --- train_head -----------------------------------------------------------------------------

def train_head(common: Common, cfg: Any, *, split: Path, raw: Path, suggestion: Path, out: Path,
               history_csv: Path, log: Log | None = None) -> dict:
    t0 = time.perf_counter()
    lr = resolve_lr(cfg.lr, suggestion, "train_head.lr")
    device = common.start()
    data = load_data(split, raw, size=common.train.size, workers=common.train.workers)
    model = pretrained(common, data, device)
    train_bn = cfg.bn == "train"
    freeze_to(model, HEAD, train_bn=train_bn)
    resume = out.parent / "resume"
    key = fingerprint("train_head", cfg, common, lr, files=(split,))
    history = History(log)
    loss_fn = common.loss()
    kw = dict(loss_fn=loss_fn, amp=common.train.amp, clip_grad=common.train.clip_grad,
              patience=common.train.patience, keep=common.train.keep, history=history, resume_dir=resume, key=key)
    if cfg.precompute_epochs:
        # Body features once (eval mode, no augmentation); then each head epoch costs milliseconds.
        ft = features(model, common.batches(data.train, device, train=False), amp=common.train.amp)
        fv = features(model, common.batches(data.valid, device, train=False), amp=common.train.amp)
        tb = batches((ft, data.train.training_targets), batch_size=common.train.batch_size, train=True, seed=common.seed, device=device)
        vb = batches((fv, data.valid.labels), batch_size=common.train.batch_size, train=False, seed=common.seed, device=device)
        opt = common.optimizer(model, [lr] * 3)
        sched = make_schedule(opt, epochs=cfg.precompute_epochs, steps_per_epoch=len(tb), **cfg.schedule.model_dump())
        _train_phase(model.head, name="precomputed", train=tb, valid=vb, epochs=cfg.precompute_epochs,
                     optimizer=opt, schedule=sched, **kw)
    if cfg.epochs:
        tb = common.batches(data.train, device, train=True)
        opt = common.optimizer(model, [lr] * 3)
        sched = make_schedule(opt, epochs=cfg.epochs, steps_per_epoch=len(tb), **cfg.schedule.model_dump())
        _train_phase(model, name="augmented", train=tb, valid=common.batches(data.valid, device, train=False),
                     epochs=cfg.epochs, optimizer=opt, schedule=sched,
                     train_mode=lambda: set_bn_mode(model, policy=cfg.bn, first_trainable=HEAD), **kw)
    return {"lr": lr, **_finish(model, data, common, device, out=out, history=history, history_csv=history_csv,
                                size=common.train.size, stage="train_head", resume_dir=resume, t0=t0)}


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


# --- finetune -------------------------------------------------------------------------------

def finetune(common: Common, cfg: Any, lr_find_cfg: Any, *, split: Path, raw: Path, checkpoint: Path, out: Path,
             history_csv: Path, lr_find_dir: Path, log: Log | None = None) -> dict:
    t0 = time.perf_counter()
    device = common.start()
    model, meta = load_checkpoint(checkpoint)
    model = common.prepare(model, device)
    data = load_data(split, raw, size=meta["size"], workers=common.train.workers)
    _same_classes(meta, data, checkpoint)
    freeze_to(model, cfg.unfreeze_to, train_bn=cfg.bn == "train")
    train_mode = lambda: set_bn_mode(model, policy=cfg.bn, first_trainable=cfg.unfreeze_to)  # noqa: E731
    train_set, stopping = fit_set(data, cfg.fit_on, common, "finetune")
    tb = common.batches(train_set, device, train=True)
    lr = cfg.lr
    if lr == "auto":  # the range test on the unfrozen model, keeping the groups' ratios
        result = _range_test(model, model, common, lr_find_cfg, tb, spread_lrs(1.0, cfg.lr_mult, 3), train_mode)
        write_lr_find(result, lr_find_cfg.suggestion, curve_csv=lr_find_dir / "curve.csv",
                      plot=lr_find_dir / "curve.png", suggestion=lr_find_dir / "suggestion.json")
        lr = result["summary"]["lr"]
    lrs = spread_lrs(lr, cfg.lr_mult, 3)
    opt = common.optimizer(model, lrs)
    sched = make_schedule(opt, epochs=cfg.epochs, steps_per_epoch=len(tb), **cfg.schedule.model_dump())
    resume = out.parent / "resume"
    history = History(log)
    _train_phase(model, name="unfrozen", train=tb, valid=common.batches(data.valid, device, train=False),
                 epochs=cfg.epochs, optimizer=opt, schedule=sched, train_mode=train_mode, loss_fn=common.loss(),
                 amp=common.train.amp, clip_grad=common.train.clip_grad, **stopping, history=history, resume_dir=resume,
                 key=fingerprint("finetune", cfg, common, lr, files=(split, checkpoint)))
    return {"lr": lr, "lrs": lrs, "fit_on": cfg.fit_on, "train_images": len(train_set),
            **_finish(model, data, common, device, out=out, history=history, history_csv=history_csv,
                      size=meta["size"], stage="finetune", resume_dir=resume, t0=t0,
                      model_config=meta["model_config"])}


def _same_classes(meta: dict, data: Data, checkpoint: Path) -> None:
    if list(meta["classes"]) != data.classes:
        raise DataError(f"{checkpoint}: trained on classes {meta['classes']}, the split has {data.classes}")


# --- resize ---------------------------------------------------------------------------------

def resize(common: Common, cfg: Any, *, unfreeze_to: int, split: Path, raw: Path, checkpoint: Path, out: Path,
           history_csv: Path, log: Log | None = None) -> dict:
    t0 = time.perf_counter()
    device = common.start()
    model, meta = load_checkpoint(checkpoint)
    model = common.prepare(model, device)
    size = cfg.size if cfg.size is not None else int(round(meta["size"] * cfg.factor))
    data = load_data(split, raw, size=size, workers=common.train.workers)
    _same_classes(meta, data, checkpoint)
    metrics: dict[str, Any] = {"from_size": meta["size"]}
    plain = common.batches(data.valid, device, train=False)
    before = evaluate(model, plain, loss_fn=common.loss(), amp=common.train.amp)
    metrics["valid_accuracy_before"] = before["accuracy"]
    if cfg.refresh_bn:
        metrics["bn_layers_refreshed"] = refresh_bn(model, common.batches(data.train, device, train=False))
        metrics["valid_accuracy_after_bn_refresh"] = evaluate(model, plain, loss_fn=common.loss(),
                                                              amp=common.train.amp)["accuracy"]
    resume = out.parent / "resume"
    history = History(log)
    train_set, stopping = fit_set(data, cfg.fit_on, common, "resize")
    metrics.update(fit_on=cfg.fit_on, train_images=len(train_set))
    tb = common.batches(train_set, device, train=True)
    key = fingerprint("resize", cfg, common, unfreeze_to, files=(split, checkpoint))
    kw = dict(train=tb, valid=plain, loss_fn=common.loss(), amp=common.train.amp, clip_grad=common.train.clip_grad,
              **stopping, history=history, resume_dir=resume, key=key)
    for name, epochs, first, lrs in (("frozen", cfg.head_epochs, HEAD, [cfg.head_lr] * 3),
                                     ("unfrozen", cfg.epochs, unfreeze_to, spread_lrs(cfg.lr, cfg.lr_mult, 3))):
        if not epochs:
            continue
        freeze_to(model, first, train_bn=cfg.bn == "train")
        opt = common.optimizer(model, lrs)
        sched = make_schedule(opt, epochs=epochs, steps_per_epoch=len(tb), **cfg.schedule.model_dump())
        _train_phase(model, name=name, epochs=epochs, optimizer=opt, schedule=sched,
                     train_mode=lambda first=first: set_bn_mode(model, policy=cfg.bn, first_trainable=first), **kw)
    return {**metrics, **_finish(model, data, common, device, out=out, history=history, history_csv=history_csv,
                                 size=size, stage="resize", resume_dir=resume, t0=t0, model_config=meta["model_config"])}


# --- evaluate -------------------------------------------------------------------------------

TABLE_STAGES = ("train_head", "finetune", "resize")


def evaluate_test(common: Common, cfg: Any, *, split: Path, raw: Path, checkpoints: dict[str, Path],
                  stage_metrics: dict[str, Path], baseline_metrics: Path, out: Path) -> tuple[dict, Classifier, dict]:
    """Score ``cfg.checkpoint`` on the test split, plainly and with TTA; write the predictions,
    the confusion matrix, the top losses and the per-class TTA gain into ``out``. Returns the
    metrics, the model (CPU, eval mode) and the checkpoint's metadata."""
    t0 = time.perf_counter()
    device = common.start()
    model, meta = load_checkpoint(checkpoints[cfg.checkpoint])
    size = cfg.size or meta["size"]
    table = read_split(split)
    classes = class_names(table)
    if list(meta["classes"]) != classes:
        raise DataError(f"{checkpoints[cfg.checkpoint]}: trained on classes {meta['classes']}, the split has {classes}")
    decoded: dict[int, Any] = {}

    def test_at(px: int):
        if px not in decoded:
            decoded[px] = load_split(table, Path(raw) / "files", split="test", size=px, classes=classes,
                                     workers=common.train.workers)
        return decoded[px]

    test = test_at(size)
    views = ev.tta_views(cfg.tta.views, scales=cfg.tta.scales, crop=cfg.tta.crop, n=cfg.tta.n, beta=cfg.tta.beta,
                         augment=common.augmenter(), seed=common.seed)
    model = common.prepare(model, device)
    amp = lambda: autocast(device, common.train.amp)  # noqa: E731
    pred = ev.predict(model, common.batches(test, device, train=False), views, autocast=amp)
    labels = pred["labels"].numpy()
    kw = dict(ece_bins=cfg.metrics.ece_bins, top_k=cfg.metrics.top_k, bootstrap=cfg.metrics.bootstrap,
              seed=common.seed)
    plain = ev.classification_metrics(pred["plain"].numpy(), labels, classes, **kw)
    tta = ev.classification_metrics(pred["tta"].numpy(), labels, classes, **kw)
    gain = {c: tta["per_class"][c]["recall"] - plain["per_class"][c]["recall"] for c in classes}
    eval_s = time.perf_counter() - t0

    # The fast.ai lesson's table: accuracy after every stage, valid (as each stage reported it)
    # and test (each checkpoint scored here, plainly).
    base = json.loads(Path(baseline_metrics).read_text())
    majority = classes.index(base["majority_class"])
    rows: dict[str, dict] = {
        "majority_class": {"size": None, "valid_accuracy": base["majority_accuracy"],
                           "test_accuracy": float((labels == majority).mean())},
        "baseline_model": {"size": None, "valid_accuracy": base["simple_accuracy"], "test_accuracy": None},
    }
    for stage in TABLE_STAGES:
        path = Path(stage_metrics[stage])
        if not path.is_file():
            continue
        stage_m = json.loads(path.read_text())
        row = {"size": stage_m.get("size"), "valid_accuracy": stage_m.get("valid_accuracy"), "test_accuracy": None}
        if stage_m.get("fit_on", "train") != "train":  # the valid images were trained on: not a held-out figure
            row.update(valid_accuracy=None, fit_on=stage_m["fit_on"])
        if stage == cfg.checkpoint:
            row["test_accuracy"] = plain["accuracy"]
        elif cfg.stage_table and Path(checkpoints[stage]).is_file():
            other, other_meta = load_checkpoint(checkpoints[stage])
            other = common.prepare(other, device)
            p = ev.predict(other, common.batches(test_at(other_meta["size"]), device, train=False),
                           ev.tta_views("none"), autocast=amp)
            row["test_accuracy"] = float((p["plain"].argmax(1) == p["labels"]).double().mean())
        rows[stage] = row
    rows["evaluate"] = {"size": size, "valid_accuracy": None, "test_accuracy": plain["accuracy"]}
    rows[f"evaluate_tta_{views.name}"] = {"size": size, "valid_accuracy": None, "test_accuracy": tta["accuracy"]}

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_predictions(out / "predictions.csv", test.paths, labels, pred["plain"].numpy(), pred["tta"].numpy(), classes)
    plots.confusion({"plain": np.array(plain["confusion"]), f"TTA ({views.name}, {len(views)} views)": np.array(tta["confusion"])},
                    classes, out / "confusion.png")
    worst = ev.top_losses(pred["tta"].numpy(), labels, cfg.top_losses)
    probs = pred["tta"].numpy()
    captions = [f"{classes[labels[i]]} → {classes[probs[i].argmax()]}\n"
                f"p={probs[i].max():.2f} loss={-np.log(max(probs[i, labels[i]], 1e-15)):.2f}" for i in worst]
    if len(worst):
        plots.tensor_grid(test.images[torch.as_tensor(worst)].float().numpy() / 255, captions, out / "top_losses.png",
                          "Top losses (with TTA): actual → predicted, probability of the prediction, loss")
    else:
        plots.tensor_grid(np.zeros((0, 1, 8, 8)), [], out / "top_losses.png", "Top losses: none requested")
    plots.tta_gain(gain, out / "tta_gain.png", f"Per-class recall gain from TTA ({views.name})")
    metrics = {
        "checkpoint": cfg.checkpoint, "size": size, "tta_views": views.name, "views": len(views),
        "test": {k: v for k, v in plain.items() if k != "confusion"},
        "test_tta": {k: v for k, v in tta.items() if k != "confusion"},
        "tta_gain": {"accuracy": tta["accuracy"] - plain["accuracy"], "log_loss": tta["log_loss"] - plain["log_loss"],
                     "per_class_recall": gain},
        "confusion": {"classes": classes, "plain": plain["confusion"], "tta": tta["confusion"]},
        "most_confused": ev.most_confused(np.array(tta["confusion"]), classes),
        "table": rows,
        "eval_time_s": round(eval_s, 1),
        "time_s": round(time.perf_counter() - t0, 1),
    }
    model = model.cpu().eval()
    return metrics, model, meta


def _write_predictions(path: Path, paths: list[str], labels, plain, tta, classes: list[str]) -> None:
    """One row per test image: DVC's confusion template reads ``actual`` against ``predicted``
    (plain) or ``predicted_tta``."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "actual", "predicted", "probability", "predicted_tta", "probability_tta",
                    *[f"p_{c}" for c in classes]])
        for i, p in enumerate(paths):
            w.writerow([p, classes[labels[i]], classes[plain[i].argmax()], f"{plain[i].max():.6f}",
                        classes[tta[i].argmax()], f"{tta[i].max():.6f}", *[f"{v:.6f}" for v in tta[i]]])


def format_table(rows: dict[str, dict]) -> str:
    """The stage table as fixed-width text (printed at the end of ``dvc repro``)."""
    def pct(v):
        return "" if v is None else f"{100 * v:.2f}%"
    lines = [f"{'stage':<24}{'size':>6}{'valid acc':>14}{'test acc':>12}"]
    for name, r in rows.items():
        valid = f"({r['fit_on']})" if r.get("fit_on") else pct(r["valid_accuracy"])
        lines.append(f"{name:<24}{r['size'] or '':>6}{valid:>14}{pct(r['test_accuracy']):>12}")
    return "\n".join(lines)
