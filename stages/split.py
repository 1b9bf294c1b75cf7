"""split: seeded, stratified, duplicate-aware train / valid / test assignment."""
import mlflow
import pandas as pd

from recipe import plots
from recipe.config import load_section, read_params
from recipe.errors import DataError
from recipe.schema import DataConfig, SplitConfig, TrackingConfig
from recipe.split import split
from recipe.tracking import stage_run
from stages._common import run, write_json


def main(args):
    params = read_params()
    cfg = load_section("split", SplitConfig, params)
    data = load_section("data", DataConfig, params)
    tracking = load_section("tracking", TrackingConfig, params)
    used = {"split": params["split"], "data": {"stratify_column": data.stratify_column}}
    with stage_run("split", used, experiment=tracking.experiment):
        manifest = pd.read_csv(args.manifest, keep_default_na=False, dtype={"path": str, "label": str})
        table, summary = split(manifest=manifest, stratify_column=data.stratify_column, **cfg.model_dump())
        args.split.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.split, index=False)
        write_json(args.metrics, summary)
        plots.split_counts(summary["counts"], args.plot)
        mlflow.log_metrics({"images": summary["images"], "leaking_groups": summary["leaking_groups"],
                            **{f"fraction.{k}": v for k, v in summary["fractions_actual"].items()},
                            **{f"count.{s}.{label}": n for s, c in summary["counts"].items() for label, n in c.items()}})
        mlflow.log_artifact(str(args.split))
        mlflow.log_artifact(str(args.metrics))
        mlflow.log_artifact(str(args.plot), "plots")
        print(f"split: {summary['fractions_actual']} of {summary['images']} images; leaking groups: {summary['leaking_groups']}")
        if summary["leaking_groups"]:
            raise DataError(f"split: {summary['leaking_groups']} duplicate groups straddle splits")


if __name__ == "__main__":
    run(main, "manifest", "split", "metrics", "plot")
