"""ingest: copy the configured source into data/raw (see recipe.data.sources)."""

from recipe.core.layout import RAW
from recipe.core.schema import Seed
from recipe.data.schema import DataConfig
from recipe.data.sources import ingest
from recipe.track import tracking
from stages._common import run, stage_config


def main(args):
    p, experiment = stage_config("ingest")
    data = p.section("data", DataConfig)
    seed = p.section("seed", Seed)
    with tracking.stage_run("ingest", p.used, experiment=experiment):
        summary = ingest(out=args.out, seed=seed, **data.model_dump(exclude={"stratify_column", "soft_labels"}))
        tracking.log_metrics({"entries": summary["entries"], "entries_kept": summary["entries_kept"]})
        tracking.log_artifact(str(args.out / RAW.summary))
        tracking.log_artifact(str(args.out / RAW.index))
    print(f"ingest: {summary['entries_kept']} entries from {summary['source']} into {args.out} ({len(summary['classes'])} classes)")


if __name__ == "__main__":
    run(main, "out")
