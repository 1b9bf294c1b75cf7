"""evaluate: the test split with and without TTA, the stage table, the report, the model in MLflow."""
from __future__ import annotations

import csv
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature

import recipe
from recipe import evaluate, tracking
from recipe.predict import Predictor, prepare
from recipe.report import write_report
from recipe.schema import EvaluateConfig
from stages._common import log_numbers, run, stage_config, write_json
from stages._training import common_config

# What the logged model needs to load elsewhere (recipe's own code travels with it, code_paths).
_REQUIREMENTS = ("torch", "torchvision", "numpy", "pillow", "efficientnet-lite-pytorch")


def main(args):
    p, experiment = stage_config("evaluate")
    common = common_config(p)
    cfg = p.section("evaluate", EvaluateConfig)
    data = p.section("data", dict)  # dvc.yaml: data.source, data.task (the report's title)
    dirs = {"train_head": args.head, "finetune": args.finetune, "resize": args.resize}
    with tracking.stage_run("evaluate", p.used, experiment=experiment) as run_:
        metrics, model, meta = evaluate.run(
            common, cfg, split=args.split, raw=args.raw,
            checkpoints={s: dirs[s] / "model.pt" for s in evaluate.TABLE_STAGES},
            stage_metrics={s: dirs[s] / "metrics.json" for s in evaluate.TABLE_STAGES},
            baseline_metrics=args.baseline / "metrics.json", out=args.out)
        write_json(args.out / "metrics.json", metrics)
        report = write_report(args.out / "report.html", audit=args.audit, split=args.split.parent,
                              baseline=args.baseline, lr_find=args.lr_find, stages=dirs, evaluate=args.out,
                              metrics=metrics, title=_title(data, common.seed))
        log_numbers({k: metrics[k] for k in ("test", "test_tta", "tta_gain")})
        log_numbers({s: {k: v for k, v in r.items() if v is not None} for s, r in metrics["table"].items()}, "table")
        tracking.log_table({"stage": list(metrics["table"]),
                          **{col: [r[col] for r in metrics["table"].values()]
                             for col in ("size", "valid_accuracy", "test_accuracy")}}, "stage_table.json")
        for name in ("metrics.json", "predictions.csv", "report.html"):
            tracking.log_artifact(args.out / name)
        for name in ("confusion.png", "top_losses.png", "tta_gain.png"):
            tracking.log_artifact(args.out / name, "plots")
        uri = (tracking.guarded("log the model", log_model, model, meta, cfg, args.out / "predictions.csv", args.raw)
               if cfg.model.log else None)
        if uri:
            tracking.set_tag("model_uri", uri)
        print(f"\nTest split, checkpoint {cfg.checkpoint} at {metrics['size']} px "
              f"(TTA: {metrics['tta_views']}, {metrics['views']} views):")
        print(evaluate.format_table(metrics["table"]))
        print(f"report: {report}" + (f"\nMLflow model: {uri}" if uri else ""))
        if run_ is not None:
            print(f"MLflow run: {run_.info.run_id}")


def _title(data: dict, seed: int) -> str:
    task = f" {data['task']}" if data.get("task") else ""
    return f"finetune-recipe: {data.get('source')}{task}, seed {seed}"


def log_model(model, meta: dict, cfg, predictions: Path, raw: Path) -> str:
    """The final model as an MLflow pytorch model (pyfunc-loadable): float32 images
    ``(N, C, size, size)`` in [0, 1] in, class probabilities out; ``recipe.predict.prepare``
    makes such arrays from image files."""
    predictor = Predictor(model, meta["classes"], meta["size"], meta.get("channels", 3)).eval()
    with open(predictions, newline="") as f:
        first = [row["path"] for row, _ in zip(csv.DictReader(f), range(2))]
    example = prepare([Path(raw) / "files" / p for p in first], predictor.size, predictor.channels)
    with torch.no_grad():
        out = predictor(torch.from_numpy(example)).numpy()
    info = mlflow.pytorch.log_model(
        predictor, name="model", signature=infer_signature(example, out.astype(np.float32)), input_example=example,
        code_paths=[str(Path(recipe.__file__).parent)], registered_model_name=cfg.model.register_as,
        pip_requirements=[f"{p}=={metadata.version(p)}" for p in _REQUIREMENTS],
        metadata={"classes": predictor.classes, "size": predictor.size, "channels": predictor.channels})
    return info.model_uri


if __name__ == "__main__":
    run(main, "split", "raw", "audit", "baseline", "lr_find", "head", "finetune", "resize", "out")
