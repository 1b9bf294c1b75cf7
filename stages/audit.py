"""audit: inspect every file in data/raw, write the manifest, the report and the pictures."""

from recipe.core.layout import RAW
from recipe.core.schema import Seed
from recipe.data.audit import audit, check_usable, metrics_of
from recipe.data.schema import AuditConfig
from recipe.report import plots
from recipe.track import tracking
from stages._common import run, stage_config, write_json


def main(args):
    p, experiment = stage_config("audit")
    cfg = p.section("audit", AuditConfig)
    seed = p.section("seed", Seed)
    with tracking.stage_run("audit", p.used, experiment=experiment):
        manifest, report = audit(
            raw=args.raw, **cfg.model_dump(exclude={"drop_unreadable", "min_images", "samples_per_class", "max_duplicate_groups"})
        )
        args.manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.to_csv(args.manifest, index=False)
        write_json(args.report, report)
        plots.audit_pictures(manifest, report, files=args.raw / RAW.files, out=args.plots, seed=seed,
                             per_class=cfg.samples_per_class, max_groups=cfg.max_duplicate_groups)
        tracking.log_metrics(metrics_of(report))
        for path in (args.manifest, args.report):
            tracking.log_artifact(str(path))
        tracking.log_artifacts(str(args.plots), "plots")
        print(f"audit: {report['kept']} of {report['entries']} entries usable; issues: {report['issues'] or 'none'}")
        check_usable(report, min_images=cfg.min_images, drop_unreadable=cfg.drop_unreadable)


if __name__ == "__main__":
    run(main, "raw", "manifest", "report", "plots")
