"""Head training on cached body features vs through the frozen body, per epoch (train_head's precompute).

Claim: once the frozen body's pooled features are computed (``recipe.train.session.features``, one
eval-mode pass over the images), an epoch of head training on them (``fit`` on ``model.head``
with the feature tensor) costs a tiny fraction of an epoch that pushes every image through the
frozen body again. The cache is the same forward pass over the same images (in eval mode), so
it costs about one such epoch, a little less; caching is then already no slower at one head
epoch and far cheaper at train_head's default ``precompute_epochs: 4``.

How it is measured:
- Data: the first ``--images`` (default 192) ELPV PNGs by name are the training images, the next
  ``--valid`` (default 64) the validation images; decoded once with
  ``recipe.data.loader.decode_all`` at ``--size`` px (default 128, the recipe's train.image_size), not
  timed. Binary labels.
- Model: EfficientNet-Lite0 with the bundled ImageNet weights (``recipe.train.session.new_model`` with
  conf/model/efficientnet_lite0.yaml's settings), ``freeze_to(model, 2)``: only the head
  trains. With ``--train-bn`` the BatchNorm scales and shifts of the body train too
  (``freeze_to(..., train_bn=True)``, what train_head does with its default ``bn: train``), so
  the through-body epoch also runs a backward pass through the body.
- Through the body (the same-run reference): ``fit(model, epochs=1)`` on image ``Batches`` from
  ``recipe.train.session.batches`` (shuffled; ``--augment none`` by default, ``top_down`` as in
  train_head's augmented phase), validation on the images, BatchNorm in training mode.
- Cache: ``features(model, train images)`` + ``features(model, valid images)``, eval mode, as
  train_head does before its precomputed phase.
- Cached epoch: ``fit(model.head, epochs=1)`` on ``Batches`` of the cached feature tensors
  (training and validation), as train_head's precomputed phase.
- Both fit calls: AdamW built by ``param_groups`` + ``make_optimizer`` (conf/optim/adamw.yaml),
  constant rate ``--lr`` (default 1e-3), batch ``--batch-size`` (default 32), ``resume=None``,
  the printed table sent to a buffer; the time is the whole call, ``time.perf_counter``.
  Weights are reset to the same initial state before every through-body epoch and cache.
- One untimed warm-up (a features pass over one batch), then ``--trials`` rounds (default 5):
  a through-body epoch, the cache, then ``--head-epochs`` (default 10) cached epochs each timed
  on its own. Printed: min / median / max of each; ratios use the medians. Break-even: the
  number of head epochs E at which cache + E x cached epoch = E x through-body epoch, i.e.
  cache / (through - cached).
- Threads: PyTorch's default (printed) unless ``--threads``. On a shared machine absolute
  times are inflated; the ratios from the interleaved rounds are what to read.

Run: ``python bench/head_cache.py`` (under a minute on 2 cores; ``--images 1574 --valid 394``
approaches the recipe's ELPV split; ``--train-bn`` for train_head's default ``bn: train``).
"""
from __future__ import annotations

import argparse
import copy
import math
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

from recipe.train.models import freeze_to
from recipe.train.session import features

AUGMENTS = {"none": None, "top_down": TOP_DOWN}  # conf/augment/{none,top_down}.yaml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=192, help="training images (the first N ELPV files)")
    ap.add_argument("--valid", type=int, default=64, help="validation images (the files after those)")
    ap.add_argument("--size", type=int, default=128, help="px (train.image_size)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--augment", choices=sorted(AUGMENTS), default="none", help="for the through-body epochs")
    ap.add_argument("--train-bn", action="store_true", help="body BatchNorm affine parameters train too (bn: train)")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--head-epochs", type=int, default=10, help="cached epochs timed per round")
    add_common_options(ap)
    args = ap.parse_args()
    require(ap, args, twos=("images",), ones=("valid", "size", "batch-size", "trials", "head-epochs"))
    require(ap, args, zeros=("threads",))

    start(args)
    xt, yt, xv, yv, decode_s = train_valid(ap, args)
    model = lite0(yt)
    freeze_to(model, model.head_group, train_bn=args.train_bn)
    init = copy.deepcopy(model.state_dict())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def image_batches(train: bool, augment: bool = False):
        xs, ys = (xt, yt) if train else (xv, yv)
        return cpu_batches((xs, ys), args, train=train, augment=AUGMENTS[args.augment] if augment else None)

    def one_epoch(module: nn.Module, tb, vb) -> float:
        return fit_epoch(module, tb, vb, adamw(model, [args.lr] * len(model.groups)))

    print_header(f"head training: cached features vs through the frozen body | EfficientNet-Lite0, {trainable:,} "
                 f"trainable parameters{' (head + body BatchNorm)' if args.train_bn else ' (head)'} | {args.images} "
                 f"train + {args.valid} valid ELPV images at {args.size} px (decoded once in {decode_s:.1f} s) | "
                 f"batch {args.batch_size} | augment {args.augment} | {args.trials} trials x (1 through-body epoch, "
                 f"cache, {args.head_epochs} cached epochs)")
    print()

    features(model, cpu_batches((xt[:args.batch_size], yt[:args.batch_size]), args, train=False))  # warm-up, untimed

    body, cache, cached = [], [], []
    dim = 0
    for k in range(args.trials):
        model.load_state_dict(init)
        body.append(one_epoch(model, image_batches(True, augment=True), image_batches(False)))
        model.load_state_dict(init)
        t = time.perf_counter()
        ft = features(model, image_batches(True))
        fv = features(model, image_batches(False))
        cache.append(time.perf_counter() - t)
        dim = ft.shape[1]
        tb, vb = cpu_batches((ft, yt), args, train=True), cpu_batches((fv, yv), args, train=False)
        round_cached = [one_epoch(model.head, tb, vb) for _ in range(args.head_epochs)]
        cached += round_cached
        print(f"round {k + 1}: through body {body[-1]:.2f} s, cache {cache[-1]:.2f} s, cached epoch median "
              f"{1e3 * statistics.median(round_cached):.1f} ms", flush=True)
    print()

    b, c, h = statistics.median(body), statistics.median(cache), statistics.median(cached)
    print(f"{'case':<36} {'min s':>10} {'median':>10} {'max s':>10}")
    print(f"{'epoch through frozen body (ref)':<36} {spread(body, '10.3f')}")
    print(f"{f'cache: features of {args.images}+{args.valid} images':<36} {spread(cache, '10.3f')}")
    print(f"{f'epoch on cached features ({dim}-d)':<36} {spread(cached, '10.3f')}")
    print()
    print(f"through-body epoch / cached epoch: {b / h:,.0f}x (medians)")
    print(f"cache / through-body epoch: {c / b:.2f}x")
    if b > h:
        e = c / (b - h)
        print(f"break-even: {e:.2f} head epochs (caching is cheaper from epoch {math.floor(e) + 1} on)")
        for n in (1, 4, 10):
            print(f"  {n:>2} head epochs: cached {c + n * h:7.2f} s vs through the body {n * b:7.2f} s")
    else:
        print("break-even: never (the cached epoch was not faster)")


if __name__ == "__main__":
    main()
