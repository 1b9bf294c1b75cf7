"""baseline: Karpathy's checks and the numbers to beat (loss at init, input-independent baseline,
overfitting one batch, majority class, a small model from scratch)."""

from recipe.track import tracking
from recipe.train import baseline
from recipe.train.schema import BaselineConfig
from stages._common import log_numbers, run, stage_config, write_json
from stages._training import common_config


def main(args):
    p, experiment = stage_config("baseline")
    common = common_config(p, args.split)
    cfg = p.section("baseline", BaselineConfig)
    with tracking.stage_run("baseline", p.used, experiment=experiment):
        metrics = baseline.run(common, cfg, split=args.split, raw=args.raw, picture=args.picture,
                               candidates=args.candidates)
        write_json(args.metrics, metrics)
        log_numbers(metrics)
        tracking.log_artifact(str(args.metrics))
        tracking.log_artifact(str(args.picture), "plots")
        failed = baseline.failed_checks(metrics)
        if failed and cfg.on_fail == "error":
            raise baseline.CheckFailed("baseline: " + "; ".join(failed) + " (baseline.on_fail=warn to go on anyway)")
        for line in failed:
            print(f"warning: baseline: {line}")


if __name__ == "__main__":
    run(main, "split", "raw", "metrics", "picture", "candidates")
