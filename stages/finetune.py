"""finetune: unfreeze, discriminative learning rates, SGDR restarts, early stopping."""
import json

from recipe.core import distributed
from recipe.core.layout import TRAINING
from recipe.track import tracking
from recipe.train import finetune
from recipe.train.schema import FinetuneConfig, LrFindConfig
from stages._common import run, stage_config
from stages._training import common_config, log_epoch, record_training


def main(args):
    name = args.stage or "finetune"
    p, experiment = stage_config(name)
    common = common_config(p, args.split, image_size=False)  # at the checkpoint's size
    distributed.launch(common.train.nproc, "stages.finetune")  # train.nproc > 1: again, under torchrun
    cfg = p.section("finetune", FinetuneConfig)
    lr_find_cfg = p.section("lr_find", LrFindConfig)
    with tracking.stage_run(name, p.used, experiment=experiment):
        lr_dir = args.model.parent / TRAINING.lr_find
        head = json.loads((args.checkpoint.parent / TRAINING.metrics).read_text())
        base = json.loads(args.baseline.read_text())
        metrics = finetune.run(common, cfg, lr_find_cfg, split=args.split, raw=args.raw, checkpoint=args.checkpoint,
                               out=args.model, history_csv=args.history, lr_find_dir=lr_dir, log=log_epoch,
                               head_valid=head.get("valid_accuracy"), pixels_valid=base.get("pixels_accuracy"))
        record_training(args, metrics)
        if lr_dir.is_dir() and distributed.is_main():  # finetune.lr: auto ran a range test on the unfrozen model
            tracking.log_artifacts(str(lr_dir), "lr_find")


if __name__ == "__main__":
    run(main, "split", "raw", "checkpoint", "baseline", "model", "history", "metrics", distributed=True)
