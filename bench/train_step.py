"""Training-step throughput of EfficientNet-Lite0 by memory layout and freeze point, on the CPU.

Claim: the two settings that decide how much fine-tuning fits in the default recipe's time on
2 cores are the memory layout (``train.channels_last``: NHWC lets oneDNN pick faster kernels
for the depthwise and 1x1 convolutions) and how far finetune unfreezes (``finetune.unfreeze_to``:
with 1, the backward pass stops at the late half of the body and never reaches the
high-resolution early blocks). Each is a ratio against the reference measured in the same run:
NCHW with every layer trainable.

How it is measured:
- Data: the first ``--images`` (default 32) ELPV PNGs by name, decoded once to uint8 at ``--size``
  px (default 224), with the binary labels; one batch of all of them, as float in [0, 1]
  (1 channel, as the recipe feeds ELPV).
- Model: EfficientNet-Lite0 with the bundled ImageNet weights and conf/model/efficientnet_lite0.yaml's
  head, built by ``recipe.train.session.new_model``; frozen with ``recipe.train.models.freeze_to`` and put in
  finetune's BatchNorm policy (``frozen_all``: every BN layer in eval mode) with ``set_bn_mode``;
  for NHWC the model is converted with ``.to(memory_format=torch.channels_last)``, as
  ``Common.prepare`` does. The optimizer is the stages' AdamW over the trainable parameters.
- A step: forward, ``F.cross_entropy``, zero_grad, backward, optimizer step, timed with
  ``time.perf_counter``. The weights are restored to their initial values before each
  configuration's steps, so every configuration trains the same weights.
- Rounds: ``--rounds`` (default 3); in each, every configuration runs one untimed step then
  ``--steps`` (default 3) timed ones, in an order that rotates from round to round. Reported per
  configuration: images/s from the median step over all rounds, and its ratio to the
  reference's median.

Run: ``python bench/train_step.py`` (about two minutes on 2 cores; ``--size 128`` for finetune's size).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from _common import adamw, add_common_options, elpv, lite0, print_header, require, start

from recipe.data.loader import decode_all
from recipe.train.models import freeze_to, set_bn_mode

CONFIGS = [  # (name, channels_last, unfreeze_to); the first is the reference
    ("NCHW, all layers trainable", False, 0),
    ("NHWC, all layers trainable", True, 0),
    ("NCHW, unfreeze_to 1", False, 1),
    ("NHWC, unfreeze_to 1", True, 1),
]


def steps(model, x, y, *, channels_last: bool, unfreeze_to: int, n: int) -> list[float]:
    freeze_to(model, unfreeze_to)
    model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    model.train()
    set_bn_mode(model, policy="frozen_all", first_trainable=unfreeze_to)
    opt = adamw(model, [1e-5] * len(model.groups))
    times = []
    for i in range(n + 1):
        t = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:  # the first step of each configuration is a warm-up
            times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=32, help="the batch: the first N ELPV files")
    ap.add_argument("--size", type=int, default=224, help="px")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per configuration and round")
    ap.add_argument("--rounds", type=int, default=3)
    add_common_options(ap)
    args = ap.parse_args()
    require(ap, args, twos=("images",), ones=("size", "steps", "rounds"))
    require(ap, args, zeros=("threads",))

    start(args)
    files, y = elpv(args.images, ap)
    x = decode_all(files, size=args.size, workers=0).float().div_(255)
    model = lite0(y)
    init = copy.deepcopy(model.state_dict())
    print_header(f"training step by memory layout and freeze point | EfficientNet-Lite0, BN frozen_all | "
                 f"batch {args.images} at {args.size} px")
    times: dict[str, list[float]] = {name: [] for name, _, _ in CONFIGS}
    for r in range(args.rounds):
        for name, channels_last, unfreeze_to in CONFIGS[r % len(CONFIGS):] + CONFIGS[:r % len(CONFIGS)]:
            model.load_state_dict(init)
            times[name] += steps(model, x, y, channels_last=channels_last, unfreeze_to=unfreeze_to, n=args.steps)
    ref = statistics.median(times[CONFIGS[0][0]])
    print(f"{'configuration':30s} {'images/s':>9s} {'ratio':>7s}   step s (min median max)")
    for name, _, _ in CONFIGS:
        med = statistics.median(times[name])
        print(f"{name:30s} {args.images / med:9.1f} {ref / med:6.2f}x   "
              f"{min(times[name]):.3f} {med:.3f} {max(times[name]):.3f}")


if __name__ == "__main__":
    main()
