"""lr_find: the learning-rate range test; writes the curve and the suggestion train_head uses."""

from recipe.track import tracking
from recipe.train import lr_find
from recipe.train.schema import LrFindConfig
from stages._common import log_numbers, run, stage_config
from stages._training import common_config


def main(args):
    name = args.stage or "lr_find"
    p, experiment = stage_config(name)
    common = common_config(p, args.split)
    cfg = p.section("lr_find", LrFindConfig)
    with tracking.stage_run(name, p.used, experiment=experiment):
        metrics = lr_find.run(common, cfg, split=args.split, raw=args.raw, curve_csv=args.curve, plot=args.plot,
                              suggestion=args.suggestion)
        log_numbers({k: v for k, v in metrics.items() if k != "rule"})
        for path in (args.curve, args.suggestion):
            tracking.log_artifact(str(path))
        tracking.log_artifact(str(args.plot), "plots")


if __name__ == "__main__":
    run(main, "split", "raw", "curve", "plot", "suggestion")
