"""resize: progressive resizing, continuing from the fine-tuned model at a larger image size."""
import json

from recipe.core import distributed
from recipe.core.layout import TRAINING
from recipe.track import tracking
from recipe.train import resize
from recipe.train.schema import ResizeConfig
from stages._common import run, stage_config
from stages._training import common_config, log_epoch, record_training


def main(args):
    name = args.stage or "resize"
    p, experiment = stage_config(name)
    common = common_config(p, args.split, image_size=False)  # at the checkpoint's size
    distributed.launch(common.train.nproc, "stages.resize")  # train.nproc > 1: again, under torchrun
    cfg = p.section("resize", ResizeConfig)
    # as deep as finetune went: its decision (finetune.unfreeze_to, or what auto decided) is in its metrics
    unfreeze_to = json.loads((args.checkpoint.parent / TRAINING.metrics).read_text())["unfreeze_to"]
    with tracking.stage_run(name, p.used, experiment=experiment):
        metrics = resize.run(common, cfg, unfreeze_to=unfreeze_to, split=args.split, raw=args.raw,
                             checkpoint=args.checkpoint, out=args.model, history_csv=args.history, log=log_epoch)
        record_training(args, metrics)


if __name__ == "__main__":
    run(main, "split", "raw", "checkpoint", "model", "history", "metrics", distributed=True)
