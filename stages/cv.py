"""cv: the out-of-fold predictions, the cross-validated figures, the label issues and the split
the final fit trains on (cv.policy); recipe/decide/cv.py says how."""
import shutil
import time

import numpy as np
import pandas as pd

from recipe.core.errors import DataError
from recipe.core.layout import CV, FOLD_SPLITS, RAW
from recipe.data.schema import CvConfig
from recipe.data.split import LABELS, class_names, read_split
from recipe.decide import cv
from recipe.report import plots
from recipe.track import tracking
from stages._common import log_numbers, run, stage_config, write_json
from stages._training import common_config


def main(args):
    t0 = time.perf_counter()
    p, experiment = stage_config("cv")
    cfg = p.section("cv", CvConfig)
    table = read_split(args.split)
    classes = class_names(table)
    multi = LABELS in table.columns  # several labels per image: each label's sigmoid, cleanlab's multi-label issues
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if cfg.folds < 2:
        with tracking.stage_run("cv", p.used, experiment=experiment):
            _off(args, cfg, table, classes)
        return
    common = common_config(p)
    splits = args.folds.parent / CV.fold_splits
    folds = pd.read_csv(splits / FOLD_SPLITS.folds, keep_default_na=False)
    fold_tables = {i: read_split(splits / f"{i}.csv") for i in range(cfg.folds)}
    models = {i: cv.fold_model(args.folds, i, cfg.stages) for i in range(cfg.folds)}
    with tracking.stage_run("cv", p.used, experiment=experiment):
        oof = cv.oof_predictions(common, table=table, fold_tables=fold_tables, models=models, raw=args.raw)
        if set(oof["path"]) != set(folds["path"]):
            raise DataError("cv: the out-of-fold predictions do not cover train + valid exactly (rerun cv_split)")
        oof.to_csv(out / CV.oof, index=False, float_format="%.6f")
        figures = cv.cv_figures(oof, classes, multi)
        issues = cv.label_issues(oof, classes, multi)
        final, issues = cv.apply_policy(table, issues, cfg.policy, cfg.max_suspects)
        issues.to_csv(out / CV.label_issues, index=False, float_format="%.6f")
        if cfg.policy == "report":
            shutil.copyfile(args.split, out / CV.split)  # byte for byte: turning cv on does not rerun the final fit
        else:
            final.to_csv(out / CV.split, index=False)
        _grid(issues.head(cfg.grid_images), args.raw, out / CV.label_issues_plot, 160)  # tiles of 160 px
        spread = cv.soft_spread(issues, table)
        conflicts = cv.duplicate_conflicts(table, issues)
        metrics = {
            "folds": cfg.folds, "stages": cfg.stages, **{k: v for k, v in figures.items() if k != "folds"},
            "members": [str(models[i]) for i in range(cfg.folds)],
            "label_issues": {"suspects": int(len(issues)), "share": len(issues) / len(oof),
                             "in_train": int(issues["action"].ne("kept (valid)").sum()),
                             "pairs": cv.pair_counts(issues), "soft_spread": spread,
                             "duplicate_conflicts": len(conflicts)},
            "policy": {"name": cfg.policy, "max_suspects": cfg.max_suspects,
                       "dropped": int(issues["action"].eq("dropped").sum()),
                       "relabelled": int(issues["action"].eq("relabelled").sum()),
                       "train_images": int((final["split"] == "train").sum())},
            "conflicts": conflicts,
            "time_s": round(time.perf_counter() - t0, 1),
        }
        write_json(args.metrics, metrics)
        log_numbers({k: metrics[k] for k in ("accuracy", "accuracy_std", "balanced_accuracy", "balanced_accuracy_std",
                                              "log_loss", "log_loss_std", "pooled")}, "cv")
        log_numbers({k: v for k, v in metrics["label_issues"].items() if not isinstance(v, dict)}, "label_issues")
        for name in (CV.oof, CV.label_issues, CV.split):
            tracking.log_artifact(out / name)
        tracking.log_artifact(args.metrics)
        tracking.log_artifact(out / CV.label_issues_plot, "plots")
    print(f"cv: {cfg.folds} folds: accuracy {100 * figures['accuracy']:.2f}% ± {100 * figures['accuracy_std']:.2f} "
          f"(pooled {100 * figures['pooled']['accuracy']:.2f}%; balanced, pooled "
          f"{100 * figures['pooled']['balanced_accuracy']:.2f}%), log loss {figures['log_loss']:.4f} ± "
          f"{figures['log_loss_std']:.4f}; {len(issues)} label suspects; policy {cfg.policy}"
          + (f": {metrics['policy']['dropped'] + metrics['policy']['relabelled']} train images changed"
             if cfg.policy != "report" else ""))
    recall = figures["pooled"]["per_class"]
    worst = sorted(recall, key=lambda c: recall[c]["recall"])[:5]
    print("cv: recall out of fold, lowest first: " + ", ".join(
        f"{c} {100 * recall[c]['recall']:.1f}% of {recall[c]['support']}" for c in worst))


def _off(args, cfg, table, classes) -> None:
    """cv.folds: 0: empty tables, a titled blank picture, the split as it is."""
    out = args.out
    probs_cols = [f"p_{c}" for c in classes]
    pd.DataFrame(columns=["path", "label", "fold", *probs_cols, "predicted"]).to_csv(out / CV.oof, index=False)
    pd.DataFrame(columns=["rank", "path", "fold", "given_label", "suggested_label", "self_confidence",
                          "ranking_score", "action"]).to_csv(out / CV.label_issues, index=False)
    plots.tensor_grid(np.zeros((0, 1, 8, 8)), [], out / CV.label_issues_plot,
                      "Label issues: cross-validation is off (cv.folds: 0)")
    shutil.copyfile(args.split, out / CV.split)  # the split itself, byte for byte: the final fit does not rerun
    write_json(args.metrics, {"folds": 0, "policy": cfg.policy})
    print("cv: off (cv.folds: 0); the final fit trains on the split as it is")


def _grid(top: pd.DataFrame, raw, path, size: int) -> None:
    from pathlib import Path

    from recipe.data.loader import decode_all

    if top.empty:
        plots.tensor_grid(np.zeros((0, 1, 8, 8)), [], path, "Label issues: none flagged")
        return
    images = decode_all([Path(raw) / RAW.files / p for p in top["path"]], size=size).float().numpy() / 255
    captions = [f"#{r['rank']} {r['given_label']}\n→ {r['suggested_label']}, p={r['self_confidence']:.2f}"
                for _, r in top.iterrows()]
    plots.tensor_grid(images, captions, path, "Top suspected label errors, out of fold: #rank given label → "
                      "suggested label, p = the out-of-fold probability of the given label", tile=2.0)


if __name__ == "__main__":
    run(main, "split", "raw", "folds", "out", "metrics")
