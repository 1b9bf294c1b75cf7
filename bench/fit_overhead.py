"""Epoch time of the recipe's fit loop (``recipe.train.fit.fit``) against a bare PyTorch loop, on the CPU.

Claim: ``fit`` (seeded shuffled ``Batches``, ``loss.item()`` and the finiteness check per step,
the schedule hook, validation through ``evaluate``, the best-weights copy, the printed row)
costs within a few percent of the plain loop everyone writes, for the same model, data and
optimizer: on this model the time is in the convolutions, not in the loop around them.

How it is measured:
- Data: the first ``--images`` (default 128) ELPV PNGs by name are the training images, the
  next ``--valid`` (default 32) the validation images; decoded once with
  ``recipe.data.loader.decode_all`` to uint8 at ``--size`` px (default 96), not timed. Labels:
  the recipe's binary task (defect probability >= 0.5).
- Model: EfficientNet-Lite0 with the bundled ImageNet weights, built by
  ``recipe.train.session.new_model`` with conf/model/efficientnet_lite0.yaml's settings, read from the
  file (at present mean/std 0.498/0.502, avg pool, dropout 0.2, kaiming init, gain 0.01, prior
  bias); every layer trainable (``freeze_to(model, 0)``), BatchNorm in training mode. Its
  weights are reset to the same initial state before every epoch of either loop.
- Bare loop (the same-run reference): ``torch.optim.AdamW`` over ``model.parameters()`` with
  conf/optim/adamw.yaml's settings (betas 0.9/0.99, eps 1e-8, weight decay 0.01); ``for``
  contiguous slices of the uint8 tensor: ``.float().div_(255)``, zero_grad, forward,
  ``F.cross_entropy``, backward, step; then a validation pass (eval mode, no_grad, summed loss
  and accuracy) as ``fit`` does.
- Ours: ``fit(model, train=Batches, valid=Batches, epochs=1, schedule=constant, resume=None)``
  with the batches from ``recipe.train.session.batches`` (shuffled, no augmentation) and the optimizer
  the stages build (``param_groups`` + ``make_optimizer``: AdamW, the same hyper-parameters;
  no weight decay on biases and BatchNorm, which costs nothing). Its printed table goes to a
  buffer.
- Same batch size (``--batch-size``, default 32) and rate (``--lr``, default 1e-4) for both.
  Optimizer and batches are built before the clock starts; the time is one whole epoch
  (training + validation) around the call, ``time.perf_counter``.
- One untimed warm-up (a training step and a validation batch), then ``--trials`` rounds
  (default 5) of one epoch each, alternating the two and the order within a round (bare, ours,
  ours, bare, bare, ours, ...), so slow drift and any first-in-the-round effect hit both alike.
  Printed: every epoch time, min / median / max of each, and ours / bare as the ratio of the
  medians and as min / median / max of the per-round ratios.
- Threads: PyTorch's default (``torch.get_num_threads()``, printed) unless ``--threads``. On
  a machine shared with another job the absolute times are inflated and noisy; the ratio of
  interleaved runs is what to read.

Run: ``python bench/fit_overhead.py`` (under a minute on 2 cores, several on a busy machine;
``--size 128 --images 256 --valid 64`` comes closer to the recipe's setting).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from _common import (
    ADAMW,
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


def bare_epoch(model: nn.Module, opt: torch.optim.Optimizer, xt, yt, xv, yv, bs: int) -> float:
    model.train()
    n = len(yt)
    for i in range(0, n, bs):
        if n - i == 1:  # a batch of 1 breaks BatchNorm; the recipe drops it too
            break
        x, y = xt[i:i + bs].float().div_(255), yt[i:i + bs]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    model.eval()
    total, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(yv), bs):
            logits = model(xv[i:i + bs].float().div_(255))
            total += F.cross_entropy(logits, yv[i:i + bs], reduction="sum").item()
            correct += (logits.argmax(1) == yv[i:i + bs]).sum().item()
    return total / len(yv)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=128, help="training images (the first N ELPV files)")
    ap.add_argument("--valid", type=int, default=32, help="validation images (the files after those)")
    ap.add_argument("--size", type=int, default=96, help="px (the recipe trains at 128)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--trials", type=int, default=5, help="rounds of (bare epoch, fit epoch), order alternating")
    add_common_options(ap)
    args = ap.parse_args()
    require(ap, args, twos=("images",), ones=("valid", "size", "batch-size", "trials"))
    require(ap, args, zeros=("threads",))

    start(args)
    xt, yt, xv, yv, decode_s = train_valid(ap, args)
    model = lite0(yt)
    freeze_to(model, 0)
    init = copy.deepcopy(model.state_dict())
    steps = len(cpu_batches((xt, yt), args, train=True))

    print_header(f"fit loop vs bare loop | EfficientNet-Lite0, all layers trainable | {args.images} train + "
                 f"{args.valid} valid ELPV images at {args.size} px (decoded once in {decode_s:.1f} s) | batch "
                 f"{args.batch_size} ({steps} steps) | AdamW lr {args.lr:g} | {args.trials} trials (+ warm-up)")
    print()

    def bare_optimizer() -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=args.lr, betas=tuple(ADAMW.betas), eps=ADAMW.eps,
                                 weight_decay=ADAMW.weight_decay)

    def run_bare() -> float:
        model.load_state_dict(init)
        opt = bare_optimizer()
        t = time.perf_counter()
        bare_epoch(model, opt, xt, yt, xv, yv, args.batch_size)
        return time.perf_counter() - t

    def run_fit() -> float:
        model.load_state_dict(init)
        tb, vb = cpu_batches((xt, yt), args, train=True), cpu_batches((xv, yv), args, train=False)
        return fit_epoch(model, tb, vb, adamw(model, [args.lr] * len(model.groups)))

    # Warm-up (untimed): one training step and one validation batch, through the bare code.
    opt = bare_optimizer()
    bare_epoch(model, opt, xt[:args.batch_size], yt[:args.batch_size], xv[:args.batch_size], yv[:args.batch_size],
               args.batch_size)

    times: dict[str, list[float]] = {"bare loop (reference)": [], "recipe fit": []}
    for k in range(args.trials):
        order = [("bare loop (reference)", run_bare), ("recipe fit", run_fit)]
        for name, run in order if k % 2 == 0 else order[::-1]:
            times[name].append(run())
        print(f"round {k + 1}: bare {times['bare loop (reference)'][-1]:.2f} s, fit {times['recipe fit'][-1]:.2f} s",
              flush=True)
    print()

    n_img = args.images - (args.images % args.batch_size == 1)  # both drop a last batch of 1
    print(f"{'case':<24} {'min s':>8} {'median':>8} {'max s':>8} {'train img/s':>12}")
    for name, ts in times.items():
        print(f"{name:<24} {spread(ts, '8.2f')} {n_img / statistics.median(ts):12.1f}")
    print("(img/s: training images per second of the whole epoch, validation included)")
    print()
    bare, ours = times["bare loop (reference)"], times["recipe fit"]
    ratios = [o / b for o, b in zip(ours, bare)]
    r = statistics.median(ours) / statistics.median(bare)
    print(f"fit / bare epoch time: {r:.3f}x (medians; {100 * (r - 1):+.1f}%)")
    print(f"per-round ratios fit / bare: min {min(ratios):.3f}  median {statistics.median(ratios):.3f}  "
          f"max {max(ratios):.3f}")


if __name__ == "__main__":
    main()
