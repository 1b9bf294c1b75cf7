"""What the model stages (baseline, lr_find, train_head, finetune, resize, evaluate) add to
stages/_common.py: their shared config sections, per-epoch logging, the end of a training stage."""
from __future__ import annotations

from pathlib import Path

from recipe.core import distributed as dist
from recipe.core.config import StageParams
from recipe.core.layout import TRAINING
from recipe.core.schema import Seed
from recipe.data.sizes import median_side, train_images, train_size
from recipe.track import tracking
from recipe.train.learner import Common
from recipe.train.schema import AugmentConfig, ModelConfig, OptimConfig, TrainConfig
from stages._common import log_numbers, write_json


def train_config(p: StageParams, split: Path | None = None) -> TrainConfig:
    """The ``train`` section, validated, its ``batch_size: auto`` made a number (TrainConfig.batch_for):
    with ``split`` (a stage that trains) from the count of split.csv's train images, without it (a
    stage that only scores images) the rule's largest."""
    train = p.section("train", TrainConfig)
    images = None if split is None else train_images(split)
    resolved = train.batch_for(images)
    if train.batch_size == "auto" and images is not None:
        print(f"train.batch_size auto: {resolved.batch_size} ({images} train images, "
              f"{images / resolved.batch_size:.1f} batches an epoch)")
    return resolved


def common_config(p: StageParams, split: Path | None = None, *, image_size: bool = True) -> Common:
    """The shared sections a model stage lists in dvc.yaml, validated (see recipe.train.learner.Common);
    ``model`` and ``optim`` are None for a stage that does not list them. With ``split`` (the stages
    that train), ``train.batch_size: auto`` becomes its number (train_config), and so does
    ``train.image_size: auto`` unless ``image_size`` is False (finetune and resize train at their
    checkpoint's size)."""
    train = train_config(p, split)
    if split is not None and image_size and train.image_size == "auto":
        side = median_side(split)
        size = train_size("auto", side, low=train.auto_size.min, high=train.auto_size.max)
        print(f"train.image_size auto: {size} px (the train images' median shorter side is {side:g} px)")
        train = train.model_copy(update={"image_size": size})
    return Common(seed=p.section("seed", Seed), train=train,
                  model=p.section("model", ModelConfig) if p.has("model") else None,
                  optim=p.section("optim", OptimConfig) if p.has("optim") else None,
                  augment=p.section("augment", AugmentConfig))


def log_epoch(row: dict, step: int) -> None:
    """Per-epoch numbers to MLflow, step = epoch (MLflow's x axis)."""
    tracking.log_metrics({k: float(v) for k, v in row.items() if isinstance(v, (int, float))}, step=step)


def record_training(args, metrics: dict) -> None:
    """What train_head, finetune and resize write and log once they have trained: the metrics
    file, the final numbers (``final.*``), the history, the rate schedule and the prediction
    dynamics (recipe.train.learner.History), and their pictures."""
    if not dist.is_main():  # under DDP rank 0 writes and logs
        return
    write_json(args.metrics, metrics)
    log_numbers({f"final.{k}": v for k, v in metrics.items() if not isinstance(v, list)})
    for path in (args.history, args.metrics, args.history.with_name(TRAINING.lr_schedule),
                 args.history.with_name(TRAINING.dynamics)):
        tracking.log_artifact(path)
    for name in (args.history.with_name(TRAINING.history_plot), args.history.with_name(TRAINING.lr_schedule_plot)):
        tracking.log_artifact(name, "plots")
