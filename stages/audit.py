"""audit: inspect every file in data/raw, write the manifest, the report and the pictures."""
import mlflow
import numpy as np

from recipe import plots
from recipe.audit import audit, check_usable, metrics_of
from recipe.config import load_section, read_params
from recipe.schema import AuditConfig, Seed, TrackingConfig
from recipe.tracking import stage_run
from stages._common import run, write_json


def main(args):
    params = read_params()
    cfg = load_section("audit", AuditConfig, params)
    seed = load_section("seed", Seed, params)
    tracking = load_section("tracking", TrackingConfig, params)
    with stage_run("audit", {"audit": params["audit"], "seed": seed}, experiment=tracking.experiment):
        manifest, report = audit(
            raw=args.raw, **cfg.model_dump(exclude={"drop_unreadable", "min_images", "samples_per_class", "max_duplicate_groups"})
        )
        args.manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.to_csv(args.manifest, index=False)
        write_json(args.report, report)
        draw(manifest, report, files=args.raw / "files", out=args.plots, seed=seed,
             per_class=cfg.samples_per_class, max_groups=cfg.max_duplicate_groups)
        mlflow.log_metrics(metrics_of(report))
        for path in (args.manifest, args.report):
            mlflow.log_artifact(str(path))
        mlflow.log_artifacts(str(args.plots), "plots")
        print(f"audit: {report['kept']} of {report['entries']} entries usable; issues: {report['issues'] or 'none'}")
        check_usable(report, min_images=cfg.min_images, drop_unreadable=cfg.drop_unreadable)


def draw(manifest, report, *, files, out, seed, per_class, max_groups):
    kept = manifest[manifest["keep"]]
    plots.class_histogram(report["classes"], out / "class_histogram.png")
    plots.size_scatter(kept["width"], kept["height"], kept["label"], out / "sizes.png")
    rng = np.random.default_rng(seed)
    rows = []
    for label, of_label in kept.groupby("label"):
        picked = of_label.iloc[np.sort(rng.choice(len(of_label), size=min(per_class, len(of_label)), replace=False))]
        rows.append((f"{label} ({len(of_label)})", [(files / p, p.rsplit("/", 1)[-1]) for p in picked["path"]]))
    plots.image_grid(rows, out / "samples.png")
    readable = manifest[manifest["group"] >= 0]
    sizes = readable.groupby("group").size()
    dup_rows = []
    for gid in sizes[sizes > 1].sort_values(ascending=False, kind="stable").index[:max_groups]:
        members = readable[readable["group"] == gid].head(6)
        dup_rows.append((f"group {gid} ({sizes[gid]})", [(files / p, f"{lab}\n{p.rsplit('/', 1)[-1]}") for p, lab in zip(members["path"], members["label"])]))
    plots.image_grid(dup_rows or [("no duplicate groups", [])], out / "duplicates.png")


if __name__ == "__main__":
    run(main, "raw", "manifest", "report", "plots")
