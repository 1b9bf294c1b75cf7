"""baseline: Karpathy's checks and the numbers to beat (loss at init, input-independent baseline,
overfitting one batch, majority class, a small model from scratch)."""

from recipe import tracking
from recipe.config import load_section, read_params
from recipe.schema import BaselineConfig, TrackingConfig
from recipe.steps import CheckFailed, baseline, failed_checks
from stages._common import common_config, log_numbers, run, write_json

SECTIONS = ("seed", "train", "model", "optim", "augment", "baseline")


def main(args):
    params = read_params()
    common = common_config(params)
    cfg = load_section("baseline", BaselineConfig, params)
    tracking_cfg = load_section("tracking", TrackingConfig, params)
    with tracking.stage_run("baseline", {k: params[k] for k in SECTIONS}, experiment=tracking_cfg.experiment):
        metrics = baseline(common, cfg, split=args.split, raw=args.raw, picture=args.picture)
        write_json(args.metrics, metrics)
        log_numbers(metrics)
        tracking.log_artifact(str(args.metrics))
        tracking.log_artifact(str(args.picture), "plots")
        failed = failed_checks(metrics)
        if failed and cfg.on_fail == "error":
            raise CheckFailed("baseline: " + "; ".join(failed) + " (baseline.on_fail=warn to go on anyway)")
        for line in failed:
            print(f"warning: baseline: {line}")


if __name__ == "__main__":
    run(main, "split", "raw", "metrics", "picture")
