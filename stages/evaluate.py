"""evaluate: the chosen model on the test split, plainly and as chosen; the stage table, the report, the model in MLflow."""
from __future__ import annotations

import csv
import json
from importlib import metadata
from pathlib import Path

import mlflow
from mlflow.models import infer_signature

import recipe
from recipe.core.layout import BASELINE, CV, EVALUATE, RAW, SELECT, TRAINING, TRAINING_STAGES
from recipe.decide import evaluate, inside
from recipe.decide.labels import threshold_text
from recipe.decide.schema import EvaluateConfig, InsideConfig, ScoringConfig
from recipe.report import write_report
from recipe.ship import pyfunc_model
from recipe.track import tracking
from stages._common import log_numbers, run, stage_config, write_json
from stages._training import common_config

# What the logged model needs to load elsewhere (recipe's own code travels with it, code_paths).
_REQUIREMENTS = ("torch", "torchvision", "numpy", "pandas", "pillow", "efficientnet-lite-pytorch")


def main(args):
    p, experiment = stage_config("evaluate")
    common = common_config(p)
    cfg = p.section("evaluate", EvaluateConfig)
    look = p.section("inside", InsideConfig)
    data = p.section("data", dict)  # dvc.yaml: data.source, data.task (the report's title)
    dirs = {s: getattr(args, s) for s in TRAINING_STAGES}
    with tracking.stage_run("evaluate", p.used, experiment=experiment) as run_:
        selection = json.loads((args.select / SELECT.metrics).read_text())
        cv_metrics = json.loads((args.cv / CV.metrics).read_text())
        metrics, model, meta = evaluate.run(
            common, cfg, split=args.split, raw=args.raw, bundle=args.model,
            checkpoints={s: dirs[s] / TRAINING.model for s in TRAINING_STAGES},
            stage_metrics={s: dirs[s] / TRAINING.metrics for s in TRAINING_STAGES},
            baseline_metrics=args.baseline / BASELINE.metrics, out=args.out,
            scoring=p.section("scoring", ScoringConfig), fold_models=[Path(m) for m in cv_metrics.get("members", [])])
        metrics["inside"] = inside.run(look, model=model, meta=meta, predictions=args.out / EVALUATE.predictions,
                                         raw=args.raw, out=args.out / EVALUATE.inside, seed=common.seed)
        write_json(args.out / EVALUATE.metrics, metrics)
        evaluate.dynamics_picture(dirs, args.out / EVALUATE.dynamics)
        report = write_report(args.out / EVALUATE.report, audit=args.audit, split=args.split.parent,
                              baseline=args.baseline, lr_find=args.lr_find, stages=dirs, select=args.select,
                              evaluate=args.out, metrics=metrics, title=_title(data, common.seed), cv=args.cv)
        log_numbers({k: metrics[k] for k in ("test", "test_chosen", "chosen_gain", "inside")})
        log_numbers({s: {k: v for k, v in r.items() if v is not None} for s, r in metrics["table"].items()}, "table")
        tracking.log_table({"stage": list(metrics["table"]),
                          **{col: [r[col] for r in metrics["table"].values()]
                             for col in ("size", "valid_accuracy", "test_accuracy")}}, "stage_table.json")
        for name in (EVALUATE.metrics, EVALUATE.predictions, EVALUATE.report):
            tracking.log_artifact(args.out / name)
        for name in (EVALUATE.confusion, EVALUATE.top_losses, EVALUATE.tta_gain, EVALUATE.dynamics):
            tracking.log_artifact(args.out / name, "plots")
        for name in inside.PICTURES:
            tracking.log_artifact(args.out / EVALUATE.inside / name, "inside")
        uri = (tracking.guarded("log the model", log_model, args.model, model, cfg, args.out / EVALUATE.predictions,
                                args.raw) if cfg.model.log else None)
        if uri:
            tracking.set_tag("model_uri", uri)
        c, s = metrics["chosen"], selection["chosen"]
        print(f"\nChosen on valid ({selection['criterion']}): {c['candidate']}, views {c['views']} "
              f"({c['n_views']}), {len(c['members'])} member(s) at {c['size']} px"
              + (f", threshold {threshold_text(c['threshold'])}" if c["threshold"] is not None else "")
              + f"; {s['cost_ratio']:.1f}x the cost of {s['reference']['candidate']} alone")
        print(f"Test split: {100 * metrics['test']['accuracy']:.2f}% plain, "
              f"{100 * metrics['test_chosen']['accuracy']:.2f}% as chosen"
              + (" of the yes/no answers (one per image and label); macro mAP "
                 f"{metrics['test']['macro_ap']:.4f} plain, {metrics['test_chosen']['macro_ap']:.4f} as chosen; "
                 f"exact match {100 * metrics['test_chosen']['exact_match']:.2f}% as chosen"
                 if "macro_ap" in metrics["test"] else ""))
        print(evaluate.format_table(metrics["table"]))
        print(baseline_margin(s, metrics))
        print(f"report: {report}" + (f"\nMLflow model: {uri}" if uri else ""))
        if run_ is not None:
            print(f"MLflow run: {run_.info.run_id}")


def baseline_margin(chosen: dict, metrics: dict) -> str:
    """One line: how far above the best simple baseline (chosen on valid by select) the shipped model stands."""
    b = chosen.get("best_baseline")
    if not b:
        return "No simple baseline was scored (baseline.pixels.side: null and no train_head)."
    if "valid_macro_ap" in chosen:  # several labels per image: the labels' mean average precision (a threshold moves accuracy)
        return (f"The shipped model against the best simple baseline ({b['candidate']}): valid macro mAP "
                f"{chosen['valid_macro_ap']:.4f} against {b['valid_macro_ap']:.4f}; test macro mAP "
                f"{metrics['test_chosen']['macro_ap']:.4f} as chosen")
    test = metrics["table"].get(b["candidate"], {}).get("test_accuracy")
    line = (f"Above the best simple baseline ({b['candidate']}): valid {100 * chosen['valid_accuracy_as_chosen']:.2f}% "
            f"against {100 * b['valid_accuracy']:.2f}%")
    if test is not None:
        line += f"; test {100 * metrics['test_chosen']['accuracy']:.2f}% against {100 * test:.2f}%"
    return line


def _title(data: dict, seed: int) -> str:
    task = f" {data['task']}" if data.get("task") else ""
    return f"finetune-recipe: {data.get('source')}{task}, seed {seed}"


def log_model(bundle: Path, model, cfg, predictions: Path, raw: Path) -> str:
    """The chosen model as an MLflow pyfunc model (recipe/ship/pyfunc_model.py, models from code; the
    bundle its artifact): a DataFrame with an ``image`` column of image file bytes in (two test
    images are its input example), one probability column per class and ``predicted`` out (several
    labels per image: the labels decided, joined by a space)."""
    import pandas as pd

    with open(predictions, newline="") as f:
        first = [row["path"] for row, _ in zip(csv.DictReader(f), range(2))]
    example = pd.DataFrame({pyfunc_model.COLUMN: [(Path(raw) / RAW.files / p).read_bytes() for p in first]})
    impl = pyfunc_model.RecipeModel()
    impl.model = model
    impl.max_pixels, impl.max_rows = cfg.model.max_pixels, cfg.model.max_rows
    out = impl.predict(None, example)
    info = mlflow.pyfunc.log_model(
        name="model", python_model=pyfunc_model.__file__, artifacts={"bundle": str(bundle)},
        signature=infer_signature(example, out), input_example=example,
        model_config={"max_pixels": cfg.model.max_pixels, "max_rows": cfg.model.max_rows},
        code_paths=[str(Path(recipe.__file__).parent)], registered_model_name=cfg.model.register_as,
        pip_requirements=[f"{p}=={metadata.version(p)}" for p in _REQUIREMENTS],
        metadata={"classes": model.classes, "size": model.size, "channels": model.channels,
                  "members": list(model.names), "views": model.views.name, "threshold": model.threshold,
                  **({"multi_label": True} if model.multi_label else {})})
    return info.model_uri


if __name__ == "__main__":
    run(main, "split", "raw", "audit", "baseline", "lr_find", *TRAINING_STAGES, "select", "cv", "model", "out")
