"""train_head: a new head on the frozen pretrained body (cached features, then augmented epochs)."""
from recipe.core import distributed
from recipe.track import tracking
from recipe.train import train_head
from recipe.train.schema import TrainHeadConfig
from stages._common import run, stage_config
from stages._training import common_config, log_epoch, record_training


def main(args):
    name = args.stage or "train_head"
    p, experiment = stage_config(name)
    common = common_config(p, args.split)
    distributed.launch(common.train.nproc, "stages.train_head")  # train.nproc > 1: again, under torchrun
    cfg = p.section("train_head", TrainHeadConfig)
    with tracking.stage_run(name, p.used, experiment=experiment):
        metrics = train_head.run(common, cfg, split=args.split, raw=args.raw, suggestion=args.suggestion,
                                 out=args.model, history_csv=args.history, log=log_epoch)
        record_training(args, metrics)


if __name__ == "__main__":
    run(main, "split", "raw", "suggestion", "model", "history", "metrics", distributed=True)
