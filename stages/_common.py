"""What every stage script shares: argument parsing, one-line errors, JSON output."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from recipe.errors import RecipeError


def run(main: Callable[[argparse.Namespace], object], *paths: str, distributed: bool = False) -> None:
    """Parse ``--<path>`` options (their values come from dvc.yaml), run ``main``.

    Under torchrun, a stage that is not ``distributed`` (all but the training stages) runs on
    rank 0 alone; the other ranks return at once.

    A :class:`RecipeError` (bad config, unusable data) ends the stage with its one-line message
    on stderr and exit code 2, not a traceback.
    """
    parser = argparse.ArgumentParser()
    for name in paths:
        parser.add_argument(f"--{name}", type=Path, required=True)
    args = parser.parse_args()
    from recipe import distributed as dist

    if not distributed and dist.world_size() > 1 and not dist.is_main():
        return
    try:
        main(args)
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def write_json(path: Path, data: object) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    return path


def common_config(params: dict):
    """The sections every model stage reads, validated (see recipe.steps.Common)."""
    from recipe.config import load_section
    from recipe.schema import AugmentConfig, ModelConfig, OptimConfig, Seed, TrainConfig
    from recipe.steps import Common

    return Common(seed=load_section("seed", Seed, params), train=load_section("train", TrainConfig, params),
                  model=load_section("model", ModelConfig, params), optim=load_section("optim", OptimConfig, params),
                  augment=load_section("augment", AugmentConfig, params))


def log_epoch(row: dict, step: int) -> None:
    """Per-epoch numbers to MLflow, step = epoch (MLflow's x axis)."""
    from recipe import tracking

    tracking.log_metrics({k: float(v) for k, v in row.items() if isinstance(v, (int, float))}, step=step)


def log_numbers(metrics: dict, prefix: str = "") -> None:
    """Every number in a (nested) metrics dict to MLflow, keys joined with dots."""
    from recipe import tracking
    from recipe.config import flatten

    flat = flatten(metrics, prefix)
    tracking.log_metrics({k: float(v) for k, v in flat.items() if isinstance(v, (int, float))})  # bools as 0/1


def record_training(args, metrics: dict) -> None:
    """What train_head, finetune and resize write and log once they have trained: the metrics
    file, the final numbers (``final.*``), the history and its picture."""
    from recipe import distributed, tracking

    if not distributed.is_main():  # under DDP rank 0 writes and logs
        return
    write_json(args.metrics, metrics)
    log_numbers({f"final.{k}": v for k, v in metrics.items() if not isinstance(v, list)})
    for path in (args.history, args.metrics):
        tracking.log_artifact(path)
    tracking.log_artifact(args.history.with_suffix(".png"), "plots")
