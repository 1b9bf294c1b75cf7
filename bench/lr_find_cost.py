"""What the learning-rate range test (``recipe.train.lr_find.range_test``) costs, in training epochs.

Claim: the lr_find stage (which always sweeps a new head on the frozen body's cached features)
costs about one eval-mode pass over the training images (the cached body features) plus 100
steps of a linear layer, i.e. well under one training epoch. The sweep of the unfrozen model,
which ``finetune.lr: auto`` runs inside finetune on the trained head's model, is dearer: every
one of its up to 100 iterations is a full training step (batch 32), so it costs about
``100 x 32 / N`` epochs of N training images (12.5 epochs at N = 256; 2 at the recipe's 1,574),
or fewer when the loss diverges and the test stops early.

How it is measured:
- Data: the first ``--images`` (default 256) ELPV PNGs by name are the training images, the next
  ``--valid`` (default 64, the recipe's 15:60 valid:train proportion) the validation images;
  decoded once with ``recipe.data.loader.decode_all`` at ``--size`` px (default 96, to keep the
  100 full-model steps short; the recipe trains at 128), not timed. Binary labels.
- Model: EfficientNet-Lite0 with the bundled ImageNet weights (``recipe.train.session.new_model`` with
  conf/model/efficientnet_lite0.yaml's settings), reset to the same initial state before each
  case. Optimizer: AdamW from ``param_groups`` + ``make_optimizer`` (conf/optim/adamw.yaml).
- Reference: one full-model training epoch: every layer group trainable (``freeze_to(model, 0)``;
  finetune's default, ``unfreeze_to: 1``, keeps the early group frozen), discriminative rates
  spread from ``--lr / 9`` to ``--lr`` over the model's layer groups (``spread_lrs``), BatchNorm
  policy ``frozen`` (a no-op with every group trainable), top_down augmentation,
  ``fit(epochs=1)`` with a constant schedule, validation included, ``resume=None``; batch
  ``--batch-size`` (default 32).
- head mode, as the lr_find stage: everything frozen but the head group; ``features`` of the
  training images (timed), then ``range_test(model.head, ...)`` on shuffled batches of the
  cached features.
- unfrozen mode, as ``finetune.lr: auto`` sweeps (here with every group trainable):
  ``freeze_to(model, 0)``, group ratios ``spread_lrs`` from 1/9 to 1, top_down augmented image
  batches, ``train_mode`` = BatchNorm policy ``frozen``, ``range_test(model, ...)``.
- Range test settings are conf/config.yaml's lr_find section: ``--iterations`` 100, start 1e-7,
  end 10, smoothing 0.98, ``--diverge`` 4 (the test stops once the smoothed loss passes 4x its
  minimum; the number of points it ran is printed, with the time per iteration and what all
  ``--iterations`` would cost at that rate).
- ``--trials`` rounds (default 3), each running the epoch, head mode and unfrozen mode in turn,
  after an untimed warm-up (one training step and a features batch). Times with
  ``time.perf_counter``; min / median / max; cost in epochs = median time / median epoch time.
- Threads: PyTorch's default (printed) unless ``--threads``. On a shared machine absolute
  times are inflated; costs in epochs compare runs made in the same round.

Run: ``python bench/lr_find_cost.py`` (about 2 to 3 minutes on 2 idle cores, mostly the 100
unfrozen steps; ``--size 128 --images 1574 --valid 394`` for the recipe's setting).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

from _common import (
    TOP_DOWN,
    adamw,
    add_common_options,
    cpu_batches,
    fit_epoch,
    lite0,
    print_header,
    require,
    spread,
    start,
    train_valid,
)
from torch import nn

from recipe.train.lr_find import range_test
from recipe.train.models import freeze_to, set_bn_mode, spread_lrs
from recipe.train.session import features

LR_MULT, UNFREEZE_TO, BN = 9, 0, "frozen"  # the finetune settings of the unfrozen sweep (finetune.lr: auto), every group trainable
START_LR, END_LR, SMOOTHING = 1e-7, 10.0, 0.98  # conf/config.yaml lr_find section


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=256, help="training images (the first N ELPV files)")
    ap.add_argument("--valid", type=int, default=64, help="validation images for the reference epoch")
    ap.add_argument("--size", type=int, default=96, help="px (the recipe trains at 128)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=100, help="lr_find.iterations")
    ap.add_argument("--diverge", type=float, default=4.0, help="lr_find.diverge; inf runs every iteration")
    ap.add_argument("--lr", type=float, default=5e-4, help="head rate of the reference epoch (finetune.lr)")
    ap.add_argument("--trials", type=int, default=3)
    add_common_options(ap)
    args = ap.parse_args()
    require(ap, args, twos=("images",), ones=("valid", "size", "batch-size", "trials", "iterations"))
    require(ap, args, zeros=("threads",))

    start(args)
    xt, yt, xv, yv, decode_s = train_valid(ap, args)
    model = lite0(yt)
    init = copy.deepcopy(model.state_dict())
    loss_fn = nn.CrossEntropyLoss()
    train_mode = lambda: set_bn_mode(model, policy=BN, first_trainable=UNFREEZE_TO)

    def image_batches(train: bool):
        xs, ys = (xt, yt) if train else (xv, yv)
        return cpu_batches((xs, ys), args, train=train, augment=TOP_DOWN if train else None)

    def run_epoch() -> float:
        model.load_state_dict(init)
        freeze_to(model, UNFREEZE_TO)
        tb, vb = image_batches(True), image_batches(False)
        return fit_epoch(model, tb, vb, adamw(model, spread_lrs(args.lr, LR_MULT, len(model.groups))), train_mode=train_mode)

    def run_head() -> tuple[float, float, int]:
        model.load_state_dict(init)
        freeze_to(model, model.head_group)
        t = time.perf_counter()
        f = features(model, cpu_batches((xt, yt), args, train=False))
        t_feat = time.perf_counter() - t
        hb = cpu_batches((f, yt), args, train=True)
        opt = adamw(model, [1.0] * len(model.groups))
        t = time.perf_counter()
        curve = range_test(model.head, batches=hb.epoch, optimizer=opt, loss_fn=loss_fn, start_lr=START_LR,
                           end_lr=END_LR, iterations=args.iterations, smoothing=SMOOTHING, diverge=args.diverge)
        return t_feat, time.perf_counter() - t, len(curve["lr"])

    def run_unfrozen() -> tuple[float, int]:
        model.load_state_dict(init)
        freeze_to(model, UNFREEZE_TO)
        opt = adamw(model, spread_lrs(1.0, LR_MULT, len(model.groups)))
        tb = image_batches(True)
        t = time.perf_counter()
        curve = range_test(model, batches=tb.epoch, optimizer=opt, loss_fn=loss_fn, start_lr=START_LR, end_lr=END_LR,
                           iterations=args.iterations, smoothing=SMOOTHING, diverge=args.diverge,
                           train_mode=train_mode)
        return time.perf_counter() - t, len(curve["lr"])

    steps = len(image_batches(True))
    nominal = args.iterations * args.batch_size / args.images
    print_header(f"lr_find cost in epochs | EfficientNet-Lite0 | {args.images} train + {args.valid} valid ELPV images "
                 f"at {args.size} px (decoded once in {decode_s:.1f} s) | batch {args.batch_size} ({steps} "
                 f"steps/epoch) | range test: {args.iterations} iterations, {START_LR:g} -> {END_LR:g}, diverge "
                 f"{args.diverge:g} | {args.trials} trial(s) (+ warm-up)")
    print()

    # Warm-up (untimed): one full training step and one features batch.
    freeze_to(model, UNFREEZE_TO)
    xb, yb = next(image_batches(True).epoch(0))
    loss_fn(model(xb), yb).backward()
    model.zero_grad(set_to_none=True)
    features(model, cpu_batches((xt[:args.batch_size], yt[:args.batch_size]), args, train=False))

    epoch, feat, head, head_total, unfrozen = [], [], [], [], []
    head_points = unfrozen_points = 0
    for k in range(args.trials):
        epoch.append(run_epoch())
        tf, th, head_points = run_head()
        feat.append(tf)
        head.append(th)
        head_total.append(tf + th)
        tu, unfrozen_points = run_unfrozen()
        unfrozen.append(tu)
        print(f"round {k + 1}: epoch {epoch[-1]:.2f} s | head: features {tf:.2f} s + range test {th:.2f} s "
              f"({head_points} it) | unfrozen range test {tu:.2f} s ({unfrozen_points} it)", flush=True)
    print()

    e = statistics.median(epoch)
    print(f"{'case':<44} {'min s':>9} {'median':>9} {'max s':>9} {'epochs':>8}")
    rows = [("one full-model training epoch (reference)", epoch),
            ("head: features of the train images", feat),
            ("head: range test on cached features", head),
            ("head mode total (features + range test)", head_total),
            ("unfrozen mode: range test", unfrozen)]
    for name, ts in rows:
        print(f"{name:<44} {spread(ts, '9.2f')} {statistics.median(ts) / e:8.3f}")
    print()
    per_it_u = statistics.median(unfrozen) / unfrozen_points
    per_it_h = statistics.median(head) / head_points
    print(f"lr_find head mode costs {statistics.median(head_total) / e:.3f} epochs "
          f"({head_points} iterations, {1e3 * per_it_h:.2f} ms each; the features pass is "
          f"{100 * statistics.median(feat) / statistics.median(head_total):.0f}% of it)")
    print(f"lr_find unfrozen mode costs {statistics.median(unfrozen) / e:.2f} epochs "
          f"({unfrozen_points} of {args.iterations} iterations before it stopped, {per_it_u:.2f} s each)")
    if unfrozen_points < args.iterations:
        print(f"  all {args.iterations} iterations at that rate: {args.iterations * per_it_u / e:.2f} epochs")
    print(f"  nominal: {args.iterations} x {args.batch_size} images / {args.images} = {nominal:.2f} epochs of data; "
          f"an unfrozen iteration took {per_it_u / (e / steps):.2f}x the epoch's time per step "
          f"(the epoch's {steps} steps include its validation pass)")
    print(f"unfrozen / head mode: {statistics.median(unfrozen) / statistics.median(head_total):.1f}x")


if __name__ == "__main__":
    main()
