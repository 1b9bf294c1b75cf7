"""lr_find: the learning-rate range test; writes the curve and the suggestion train_head uses."""

from recipe import tracking
from recipe.config import load_section, read_params
from recipe.schema import FinetuneConfig, LrFindConfig, TrackingConfig
from recipe.steps import lr_find
from stages._common import common_config, log_numbers, run

SECTIONS = ("seed", "train", "model", "optim", "augment", "lr_find")


def main(args):
    params = read_params()
    common = common_config(params)
    cfg = load_section("lr_find", LrFindConfig, params)
    ft = load_section("finetune", FinetuneConfig, params)
    tracking_cfg = load_section("tracking", TrackingConfig, params)
    used = {**{k: params[k] for k in SECTIONS},
            "finetune": {"lr_mult": ft.lr_mult, "unfreeze_to": ft.unfreeze_to, "bn": ft.bn}}
    with tracking.stage_run("lr_find", used, experiment=tracking_cfg.experiment):
        metrics = lr_find(common, cfg, lr_mult=ft.lr_mult, unfreeze_to=ft.unfreeze_to, bn=ft.bn, split=args.split,
                          raw=args.raw, curve_csv=args.curve, plot=args.plot, suggestion=args.suggestion)
        log_numbers({k: v for k, v in metrics.items() if k != "rule"})
        for path in (args.curve, args.suggestion):
            tracking.log_artifact(str(path))
        tracking.log_artifact(str(args.plot), "plots")


if __name__ == "__main__":
    run(main, "split", "raw", "curve", "plot", "suggestion")
