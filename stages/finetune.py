"""finetune: unfreeze, discriminative learning rates, SGDR restarts, early stopping."""

from recipe import distributed, tracking
from recipe.config import load_section, read_params
from recipe.schema import FinetuneConfig, LrFindConfig, TrackingConfig
from recipe.steps import finetune
from stages._common import common_config, log_epoch, record_training, run

SECTIONS = ("seed", "train", "optim", "augment", "finetune", "lr_find")


def main(args):
    params = read_params()
    common = common_config(params)
    distributed.launch(common.train.nproc, "stages.finetune")  # train.nproc > 1: again, under torchrun
    cfg = load_section("finetune", FinetuneConfig, params)
    lr_find_cfg = load_section("lr_find", LrFindConfig, params)
    tracking_cfg = load_section("tracking", TrackingConfig, params)
    with tracking.stage_run("finetune", {k: params[k] for k in SECTIONS}, experiment=tracking_cfg.experiment):
        lr_dir = args.model.parent / "lr_find"
        metrics = finetune(common, cfg, lr_find_cfg, split=args.split, raw=args.raw, checkpoint=args.checkpoint,
                           out=args.model, history_csv=args.history, lr_find_dir=lr_dir, log=log_epoch)
        record_training(args, metrics)
        if lr_dir.is_dir():  # finetune.lr: auto ran a range test on the unfrozen model
            tracking.log_artifacts(str(lr_dir), "lr_find")


if __name__ == "__main__":
    run(main, "split", "raw", "checkpoint", "model", "history", "metrics", distributed=True)
