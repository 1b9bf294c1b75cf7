"""Data loading vs model throughput on the CPU: is the loader ever the bottleneck?

Claim: the recipe's data path cannot hold training back. Decoding + resizing
(``recipe.data.loader.decode_all``) happens once per stage and is already faster per image than
a training step; an epoch is then ``Batches`` slicing the in-memory uint8 cache and applying
the top_down augmentation (flips and 90-degree turns, exact index permutations), which is
orders of magnitude faster than the model's forward + backward, and than its evaluation.

How it is measured:
- Files: the first ``--images`` (default 256) ELPV PNGs by name (300x300 grayscale), working
  size ``--size`` px (default 128, the recipe's train.image_size), batch ``--batch-size`` (default 32).
- (a) ``decode_all(files, size=S, workers=1)`` (in-process) and ``workers=0`` (one process per
  core, ``os.cpu_count()``; the pool start-up is inside the call, as in every stage). With fewer
  than 64 files decode_all stays in-process whatever the workers.
- (b) ``Batches`` from ``recipe.train.session.batches`` over the decoded cache, shuffled, one full
  pass (``--loader-epochs`` passes, default 5, per timing), with top_down augmentation
  (conf/augment/top_down.yaml) and, for reference, without augmentation; every batch is
  produced (uint8 -> float in [0, 1], augmented), nothing else is done with it.
- (c) The model: EfficientNet-Lite0 with the bundled ImageNet weights
  (``recipe.train.session.new_model``, conf/model/efficientnet_lite0.yaml), every layer trainable.
  Training throughput: ``--model-batches`` (default 4) steps of forward + cross-entropy +
  backward + AdamW step (the training step as ``fit`` runs it) on batches taken from the cache;
  evaluation throughput: the same number of eval-mode, no_grad forward passes.
- One untimed warm-up (a decode of a few files, a Batches pass, one training step and one eval
  batch), then ``--trials`` rounds (default 5), each running every case in turn, so drift hits
  them alike. Printed: images/s min / median / max of the per-round rates; ratios use the medians.
  "loader / model" > 1 means the loader produces images faster than the model consumes them;
  the share of an epoch spent in ``Batches`` is its time per image over (its time + a training
  step's time) per image.
- Threads: PyTorch's default (printed) unless ``--threads``. On a shared machine absolute
  rates are lower and noisy; the ratios from the interleaved rounds are what to read.

Run: ``python bench/data_throughput.py`` (about 1 to 2 minutes on 2 idle cores, mostly the
training steps; ``--images 2624`` decodes every ELPV image).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import PIL
import torch
import torch.nn.functional as F
from _common import TOP_DOWN, adamw, add_common_options, cpu_batches, elpv, lite0, print_header, require, spread, start

from recipe.data.loader import decode_all
from recipe.train.models import freeze_to


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=256, help="the first N ELPV files")
    ap.add_argument("--size", type=int, default=128, help="px (train.image_size)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--loader-epochs", type=int, default=5, help="Batches passes per timing")
    ap.add_argument("--model-batches", type=int, default=4, help="training steps (and eval batches) per timing")
    ap.add_argument("--trials", type=int, default=5)
    add_common_options(ap)
    args = ap.parse_args()
    require(ap, args, ones=("images", "size", "batch-size", "loader-epochs", "model-batches", "trials"),
            zeros=("threads",))

    start(args)
    files, labels = elpv(args.images, ap)
    n = len(files)
    workers = os.cpu_count() or 1
    cache = decode_all(files[:8], size=args.size, workers=1)  # warm-up: page cache, lazy imports
    cache = decode_all(files, size=args.size, workers=1)
    model = lite0(labels)
    freeze_to(model, 0)
    opt = adamw(model, [1e-4] * len(model.groups))
    plain = cpu_batches((cache, labels), args, train=False)
    model_batches = [b for _, b in zip(range(args.model_batches), plain)]
    if any(len(y) < 2 for _, y in model_batches):
        ap.error("a model batch has fewer than 2 images (BatchNorm needs 2)")
    model_images = sum(len(y) for _, y in model_batches)

    def decode(w: int) -> int:
        out = decode_all(files, size=args.size, workers=w)
        assert out.shape == cache.shape and torch.equal(out, cache)
        return n

    def loader(augment: bool) -> int:
        b = cpu_batches((cache, labels), args, train=True, augment=TOP_DOWN if augment else None)
        seen = 0
        for e in range(args.loader_epochs):
            for x, _ in b.epoch(e):
                seen += len(x)
        return seen

    def train_steps() -> int:
        model.train()
        for x, y in model_batches:
            loss = F.cross_entropy(model(x).float(), y)
            loss.item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return model_images

    @torch.no_grad()
    def eval_batches() -> int:
        model.eval()
        for x, _ in model_batches:
            model(x).softmax(1)
        return model_images

    cases = {
        "(a) decode_all workers=1": lambda: decode(1),
        f"(a) decode_all workers={workers} (all)": lambda: decode(0),
        "(b) Batches + top_down augment": lambda: loader(True),
        "(b) Batches, no augmentation": lambda: loader(False),
        "(c) model train step (fwd+bwd+AdamW)": train_steps,
        "(c) model eval (no_grad forward)": eval_batches,
    }

    print_header(f"data loading vs model throughput | {n} ELPV files (300x300 grayscale PNG) -> {args.size} px, "
                 f"cache {tuple(cache.shape)} uint8 | batch {args.batch_size} | EfficientNet-Lite0 | {args.trials} "
                 f"trials (+ warm-up)", versions=f" | Pillow {PIL.__version__} | numpy {np.__version__}")
    if n < 64:
        print("note: fewer than 64 files, so decode_all runs in-process whatever the workers")
    print()

    loader(True)  # warm-up (untimed)
    train_steps()
    eval_batches()

    rates: dict[str, list[float]] = {name: [] for name in cases}
    for k in range(args.trials):
        for name, fn in cases.items():
            t = time.perf_counter()
            images = fn()
            rates[name].append(images / (time.perf_counter() - t))
        print(f"round {k + 1}: " + " | ".join(f"{r[-1]:.1f}" for r in rates.values()) + " img/s", flush=True)
    print()

    med = {name: statistics.median(r) for name, r in rates.items()}
    print(f"{'case':<40} {'min img/s':>11} {'median':>11} {'max img/s':>11} {'ms/img':>9}")
    for name, r in rates.items():
        print(f"{name:<40} {spread(r, '11.1f')} {1e3 / med[name]:9.3f}")
    print()
    names = list(cases)
    dec1, decall, aug, noaug, train, ev = (med[k] for k in names)
    print("loader / model (rates; > 1: the loader is faster):")
    for lname, lrate in ((names[0], dec1), (names[1], decall), (names[2], aug)):
        print(f"  {lname[4:]:<34} / train step {lrate / train:10.1f}x   / eval {lrate / ev:10.1f}x")
    print(f"decode_all workers={workers} / workers=1: {decall / dec1:.2f}x")
    print(f"top_down augmentation costs {100 * (noaug / aug - 1):.0f}% over plain Batches")
    share = (1 / aug) / (1 / aug + 1 / train)
    print(f"Batches + top_down share of a training epoch: {100 * share:.2f}%")
    print(f"decoding the images (once per stage) costs {100 * train / dec1:.2f}% of a training epoch over them "
          f"at workers=1, {100 * train / decall:.2f}% at workers={workers}")

if __name__ == "__main__":
    main()
