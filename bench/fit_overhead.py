"""Epoch time of the recipe's fit loop (``recipe.fit.fit``) against a bare PyTorch loop, on the CPU.

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
  ``recipe.session.new_model`` with conf/model/efficientnet_lite0.yaml's settings (mean/std
  0.498/0.502, avg pool, dropout 0.2, kaiming init, gain 0.1, prior bias); every layer trainable
  (``freeze_to(model, 0)``), BatchNorm in training mode. Its weights are reset to the same
  initial state before every epoch of either loop.
- Bare loop (the same-run reference): ``torch.optim.AdamW`` over ``model.parameters()`` (betas
  0.9/0.99, eps 1e-8, weight decay 0.01); ``for`` contiguous slices of the uint8 tensor:
  ``.float().div_(255)``, zero_grad, forward, ``F.cross_entropy``, backward, step; then a
  validation pass (eval mode, no_grad, summed loss and accuracy) as ``fit`` does.
- Ours: ``fit(model, train=Batches, valid=Batches, epochs=1, schedule=constant, resume=None)``
  with the batches from ``recipe.session.batches`` (shuffled, no augmentation) and the optimizer
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
import contextlib
import copy
import io
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from recipe.data.loader import decode_all
from recipe.fit import fit
from recipe.models import freeze_to, param_groups
from recipe.optim import make_optimizer, make_schedule
from recipe.session import batches, new_model

CPU = torch.device("cpu")
BETAS, EPS, WEIGHT_DECAY = (0.9, 0.99), 1e-8, 0.01  # conf/optim/adamw.yaml
MODEL_CFG = SimpleNamespace(  # conf/model/efficientnet_lite0.yaml
    name="efficientnet_lite0", weights="bundled", mean=[0.498] * 3, std=[0.502] * 3,
    head=SimpleNamespace(pool="avg", dropout=0.2, init="kaiming", init_gain=0.1, prior_bias=True))
CLASSES = ["defective", "functional"]  # the recipe's binary ELPV task, sorted


def elpv(n: int) -> tuple[list[Path], torch.Tensor]:
    """The first ``n`` ELPV files by name and their binary labels (index into CLASSES)."""
    import elpv_dataset

    root = Path(elpv_dataset.__file__).parent / "data"
    rows = sorted(line.split() for line in (root / "labels.csv").read_text().splitlines() if line.strip())[:n]
    return [root / r[0] for r in rows], torch.tensor([0 if float(r[1]) >= 0.5 else 1 for r in rows])


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
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 = PyTorch's default")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if min(args.images, args.valid, args.size, args.batch_size, args.trials) < 1 or args.images < 2:
        ap.error("need images >= 2 and valid, size, batch-size, trials >= 1")

    if args.threads < 0:
        ap.error("need threads >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    files, labels = elpv(args.images + args.valid)
    if len(files) < args.images + args.valid:
        ap.error(f"only {len(files)} ELPV files")
    t = time.perf_counter()
    x = decode_all(files, size=args.size, workers=0)
    decode_s = time.perf_counter() - t
    xt, yt, xv, yv = x[:args.images], labels[:args.images], x[args.images:], labels[args.images:]
    priors = (torch.bincount(yt, minlength=2).double() / len(yt)).tolist()
    model = new_model(MODEL_CFG, CLASSES, priors)
    freeze_to(model, 0)
    init = copy.deepcopy(model.state_dict())
    steps = len(batches((xt, yt), batch_size=args.batch_size, train=True, seed=args.seed, device=CPU))

    print(f"fit loop vs bare loop | EfficientNet-Lite0, all layers trainable | {args.images} train + {args.valid} valid "
          f"ELPV images at {args.size} px (decoded once in {decode_s:.1f} s) | batch {args.batch_size} ({steps} steps) "
          f"| AdamW lr {args.lr:g} | {args.trials} trials (+ warm-up)")
    print(f"{platform.platform()} | {platform.processor() or platform.machine()} | os.cpu_count()={os.cpu_count()} "
          f"| torch threads {torch.get_num_threads()}")
    print(f"python {sys.version.split()[0]} | torch {torch.__version__}")
    print()

    def run_bare() -> float:
        model.load_state_dict(init)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
        t = time.perf_counter()
        bare_epoch(model, opt, xt, yt, xv, yv, args.batch_size)
        return time.perf_counter() - t

    def run_fit() -> float:
        model.load_state_dict(init)
        tb = batches((xt, yt), batch_size=args.batch_size, train=True, seed=args.seed, device=CPU)
        vb = batches((xv, yv), batch_size=args.batch_size, train=False, seed=args.seed, device=CPU)
        opt = make_optimizer(param_groups(model, [args.lr] * 3, weight_decay=WEIGHT_DECAY, bn_weight_decay=False),
                             name="adamw", betas=list(BETAS), eps=EPS)
        sched = make_schedule(opt, name="constant", epochs=1, steps_per_epoch=len(tb))
        buf = io.StringIO()
        t = time.perf_counter()
        with contextlib.redirect_stdout(buf):
            fit(model, train=tb, valid=vb, epochs=1, optimizer=opt, schedule=sched, loss_fn=nn.CrossEntropyLoss(),
                resume=None)
        return time.perf_counter() - t

    # Warm-up (untimed): one training step and one validation batch, through the bare code.
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
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
        print(f"{name:<24} {min(ts):8.2f} {statistics.median(ts):8.2f} {max(ts):8.2f} "
              f"{n_img / statistics.median(ts):12.1f}")
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
