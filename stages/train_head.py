"""train_head: a new head on the frozen pretrained body (cached features, then augmented epochs)."""
from recipe import distributed
from recipe.config import load_section, read_params
from recipe.schema import TrackingConfig, TrainHeadConfig
from recipe.steps import train_head
from recipe.tracking import stage_run
from stages._common import common_config, log_epoch, record_training, run

SECTIONS = ("seed", "train", "model", "optim", "augment", "train_head")


def main(args):
    params = read_params()
    common = common_config(params)
    distributed.launch(common.train.nproc, "stages.train_head")  # train.nproc > 1: again, under torchrun
    cfg = load_section("train_head", TrainHeadConfig, params)
    tracking_cfg = load_section("tracking", TrackingConfig, params)
    with stage_run("train_head", {k: params[k] for k in SECTIONS}, experiment=tracking_cfg.experiment):
        metrics = train_head(common, cfg, split=args.split, raw=args.raw, suggestion=args.suggestion,
                             out=args.model, history_csv=args.history, log=log_epoch)
        record_training(args, metrics)


if __name__ == "__main__":
    run(main, "split", "raw", "suggestion", "model", "history", "metrics", distributed=True)
