"""split: seeded, stratified, duplicate-aware train / valid / test assignment."""
import pandas as pd

from recipe.core.errors import DataError
from recipe.data.schema import SplitConfig, SplitDataConfig
from recipe.data.split import split
from recipe.report import plots
from recipe.track import tracking
from stages._common import log_numbers, run, stage_config, write_json


def main(args):
    p, experiment = stage_config("split")
    cfg = p.section("split", SplitConfig)
    data = p.section("data", SplitDataConfig)  # dvc.yaml: data.task, data.stratify_column, data.soft_labels
    soft = data.soft_labels.model_dump() if data.soft_labels else None
    with tracking.stage_run("split", p.used, experiment=experiment):
        manifest = pd.read_csv(args.manifest, keep_default_na=False, dtype={"path": str, "label": str})
        table, summary = split(manifest=manifest, stratify_column=data.stratify_column, soft_labels=soft,
                               task=data.task, **cfg.model_dump())
        args.split.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.split, index=False)
        write_json(args.metrics, summary)
        plots.split_counts(summary["counts"], args.plot)
        log_numbers(summary)  # the metrics file's numbers, under its names (as record logs a reused split)
        tracking.log_artifact(str(args.split))
        tracking.log_artifact(str(args.metrics))
        tracking.log_artifact(str(args.plot), "plots")
        print(f"split: {summary['fractions_actual']} of {summary['images']} images; leaking groups: {summary['leaking_groups']}")
        if summary.get("labels_not_in_every_split"):
            print(f"split: labels with too few duplicate groups to reach every split: {summary['labels_not_in_every_split']}")
        for key, note in summary.get("ignored", {}).items():
            print(f"split: data.{key} {note}")
        soft_note = summary.get("soft_labels")
        if isinstance(soft_note, str):
            print(f"split: data.soft_labels {soft_note}")
        elif soft_note:
            print(f"split: training targets from {soft_note['column']!r} (probability of {soft_note['positive']!r}); "
                  f"{soft_note['uncertain']} images strictly between 0 and 1, "
                  f"{soft_note['disagree_with_label']} whose probability disagrees with their label")
        if summary["leaking_groups"]:
            raise DataError(f"split: {summary['leaking_groups']} duplicate groups straddle splits")


if __name__ == "__main__":
    run(main, "manifest", "split", "metrics", "plot")
