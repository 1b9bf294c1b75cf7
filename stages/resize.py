"""resize: progressive resizing, continuing from the fine-tuned model at a larger image size."""
from recipe import distributed
from recipe.config import load_section, read_params
from recipe.schema import FinetuneConfig, ResizeConfig, TrackingConfig
from recipe.steps import resize
from recipe.tracking import stage_run
from stages._common import common_config, log_epoch, record_training, run

SECTIONS = ("seed", "train", "optim", "augment", "resize")


def main(args):
    params = read_params()
    common = common_config(params)
    distributed.launch(common.train.nproc, "stages.resize")  # train.nproc > 1: again, under torchrun
    cfg = load_section("resize", ResizeConfig, params)
    ft = load_section("finetune", FinetuneConfig, params)
    tracking_cfg = load_section("tracking", TrackingConfig, params)
    used = {**{k: params[k] for k in SECTIONS}, "finetune": {"unfreeze_to": ft.unfreeze_to}}
    with stage_run("resize", used, experiment=tracking_cfg.experiment):
        metrics = resize(common, cfg, unfreeze_to=ft.unfreeze_to, split=args.split, raw=args.raw,
                         checkpoint=args.checkpoint, out=args.model, history_csv=args.history, log=log_epoch)
        record_training(args, metrics)


if __name__ == "__main__":
    run(main, "split", "raw", "checkpoint", "model", "history", "metrics", distributed=True)
