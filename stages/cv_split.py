"""cv_split: the folds of train + valid (recipe/data/folds.py), and the split each fold's stages train on."""
import json

import pandas as pd
from pydantic import NonNegativeInt

from recipe.core.errors import ConfigError
from recipe.core.layout import FOLD_SPLITS
from recipe.data.folds import FOLD_COLUMNS, assign_folds, fold_split
from recipe.data.schema import SplitConfig, SplitDataConfig
from recipe.data.split import read_split
from recipe.track import tracking
from stages._common import run, stage_config


def main(args):
    p, experiment = stage_config("cv_split")
    k = p.section("cv", dict[str, NonNegativeInt])["folds"]  # dvc.yaml: cv.folds alone (the policy reruns no fold)
    if k == 1:
        raise ConfigError("cv.folds = 1: one fold holds everything out; use 0 (off) or at least 2")
    split_cfg = p.section("split", SplitConfig)
    column = p.section("data", SplitDataConfig).stratify_column
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.csv"):
        old.unlink()
    table = read_split(args.split)
    summary = {"folds": k}
    with tracking.stage_run("cv_split", p.used, experiment=experiment):
        if k >= 2:
            folds = assign_folds(table, k, seed=split_cfg.seed, stratify_column=column)
            folds.to_csv(out / FOLD_SPLITS.folds, index=False)
            for i in range(k):
                part = fold_split(table, folds, i, fractions=split_cfg.fractions, seed=split_cfg.seed,
                                     stratify_column=column)
                part.to_csv(out / f"{i}.csv", index=False)
                counts = part["split"].value_counts()
                summary[str(i)] = {s: int(counts.get(s, 0)) for s in ("train", "valid", "test")}
        else:
            pd.DataFrame(columns=list(FOLD_COLUMNS)).to_csv(out / FOLD_SPLITS.folds, index=False)
        tracking.log_artifact(out / FOLD_SPLITS.folds)
    print(f"cv_split: {json.dumps(summary)}" if k >= 2 else "cv_split: cross-validation off (cv.folds: 0)")


if __name__ == "__main__":
    run(main, "split", "out")
