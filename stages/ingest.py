"""ingest: copy the configured source into data/raw (see recipe.data.sources)."""

from recipe import tracking
from recipe.config import load_section, read_params
from recipe.data.sources import ingest
from recipe.schema import DataConfig, Seed, TrackingConfig
from stages._common import run


def main(args):
    params = read_params()
    data = load_section("data", DataConfig, params)
    seed = load_section("seed", Seed, params)
    tracking_cfg = load_section("tracking", TrackingConfig, params)
    with tracking.stage_run("ingest", {"data": params["data"], "seed": seed}, experiment=tracking_cfg.experiment):
        summary = ingest(out=args.out, seed=seed, **data.model_dump(exclude={"stratify_column", "soft_labels"}))
        tracking.log_metrics({"entries": summary["entries"], "entries_kept": summary["entries_kept"]})
        tracking.log_artifact(str(args.out / "ingest.json"))
        tracking.log_artifact(str(args.out / "index.csv"))
    print(f"ingest: {summary['entries_kept']} entries from {summary['source']} into {args.out} ({len(summary['classes'])} classes)")


if __name__ == "__main__":
    run(main, "out")
