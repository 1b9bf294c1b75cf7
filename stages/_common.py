"""What every stage script shares: argument parsing, one-line errors, its params, JSON output, logging.

It imports no training code, so the data stages (ingest, audit, split), which load it, do not
depend on the training modules; stages/_training.py is what the model stages add."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from recipe.core import distributed as dist
from recipe.core.config import StageParams, flatten, load_section, read_params, stage_params
from recipe.core.errors import RecipeError
from recipe.core.schema import TrackingConfig
from recipe.track import tracking


def run(main: Callable[[argparse.Namespace], object], *paths: str, distributed: bool = False) -> None:
    """Parse ``--<path>`` options (their values come from dvc.yaml) and ``--stage``, run ``main``.

    Under torchrun, a stage that is not ``distributed`` (all but the training stages) runs on
    rank 0 alone; the other ranks return at once.

    A :class:`RecipeError` (bad config, unusable data) ends the stage with its one-line message
    on stderr and exit code 2, not a traceback.
    """
    parser = argparse.ArgumentParser()
    for name in paths:
        parser.add_argument(f"--{name}", type=Path, required=True)
    # The stage's name in dvc.yaml when it is not the module's: a per-fold copy (cv_finetune@2)
    # reads that stage's params list and names its MLflow run after it.
    parser.add_argument("--stage", default=None)
    args = parser.parse_args()
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


def stage_config(stage: str) -> tuple[StageParams, str]:
    """The params ``stage`` depends on (exactly its list in dvc.yaml) and the
    MLflow experiment name (tracking.* changes no output, so no stage depends on it)."""
    params = read_params()
    return stage_params(stage, params), load_section("tracking", TrackingConfig, params).experiment


def log_numbers(metrics: dict, prefix: str = "") -> None:
    """Every number in a (nested) metrics dict to MLflow, keys joined with dots."""
    flat = flatten(metrics, prefix)
    tracking.log_metrics({k: float(v) for k, v in flat.items() if isinstance(v, (int, float))})  # bools as 0/1
