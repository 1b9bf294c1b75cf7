"""What the model benchmarks in bench/ share: the model, the data, the options and the printout.

The model, augmentation and optimizer settings are read from the config files the recipe uses
(conf/model/efficientnet_lite0.yaml, conf/augment/top_down.yaml, conf/optim/adamw.yaml), so the
benchmarks follow the defaults instead of copies of them. A script imports this as ``_common``:
run as ``python bench/<name>.py``, its own folder is ``sys.path[0]``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml
from torch import nn

from recipe.data.loader import Batches, decode_all
from recipe.train.augment import Augment
from recipe.train.fit import fit
from recipe.train.models import param_groups
from recipe.train.optim import make_optimizer, make_schedule
from recipe.train.schema import AdamConfig, AugmentConfig, NetConfig
from recipe.train.session import batches, new_model

CONF = Path(__file__).resolve().parent.parent / "conf"
CPU = torch.device("cpu")
CLASSES = ["defective", "functional"]  # the recipe's binary ELPV task, sorted


def _conf(path: str) -> dict:
    return yaml.safe_load((CONF / path).read_text())


MODEL_CFG = NetConfig.model_validate(_conf("model/efficientnet_lite0.yaml"))  # ModelConfig is a union: NetConfig or TimmConfig
# The top_down preset with the draws' ranges conf/config.yaml sets for every preset.
TOP_DOWN = Augment(**AugmentConfig.model_validate({**_conf("augment/top_down.yaml"),
                                                   **_conf("config.yaml")["augment"]}).model_dump())
ADAMW = AdamConfig.model_validate({**_conf("optim/adamw.yaml"), **_conf("config.yaml")["optim"]})  # + the shared keys


def add_common_options(ap: argparse.ArgumentParser) -> None:
    """--threads and --seed, the last options of every benchmark."""
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 = PyTorch's default")
    ap.add_argument("--seed", type=int, default=0)


def require(ap: argparse.ArgumentParser, args: argparse.Namespace, *, twos: tuple[str, ...] = (),
            ones: tuple[str, ...] = (), zeros: tuple[str, ...] = ()) -> None:
    """``ap.error("need A >= 2 and B, C >= 1 and D >= 0")`` unless each named option is at least that."""
    groups = [(names, least) for names, least in ((twos, 2), (ones, 1), (zeros, 0)) if names]
    if any(getattr(args, name.replace("-", "_")) < least for names, least in groups for name in names):
        ap.error("need " + " and ".join(f"{', '.join(names)} >= {least}" for names, least in groups))


def start(args: argparse.Namespace) -> None:
    """Apply --threads (0: PyTorch's default) and seed torch with --seed."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)


def elpv(n: int, ap: argparse.ArgumentParser) -> tuple[list[Path], torch.Tensor]:
    """The first ``n`` ELPV files by name and their binary labels (index into CLASSES); ``ap.error`` if fewer."""
    import elpv_dataset

    root = Path(elpv_dataset.__file__).parent / "data"
    rows = sorted(line.split() for line in (root / "labels.csv").read_text().splitlines() if line.strip())[:n]
    if len(rows) < n:
        ap.error(f"only {len(rows)} ELPV files")
    return [root / r[0] for r in rows], torch.tensor([0 if float(r[1]) >= 0.5 else 1 for r in rows])


def train_valid(ap: argparse.ArgumentParser, args: argparse.Namespace):
    """The first ``--images`` ELPV images (training) and the ``--valid`` after them, decoded once to uint8 at
    ``--size`` px, with their labels: ``xt, yt, xv, yv`` and the seconds the decoding took."""
    files, labels = elpv(args.images + args.valid, ap)
    t = time.perf_counter()
    x = decode_all(files, size=args.size, workers=0)
    decode_s = time.perf_counter() - t
    return x[:args.images], labels[:args.images], x[args.images:], labels[args.images:], decode_s


def lite0(labels: torch.Tensor) -> nn.Module:
    """EfficientNet-Lite0 as MODEL_CFG sets it up, its prior bias from the class frequencies of ``labels``."""
    priors = (torch.bincount(labels, minlength=len(CLASSES)).double() / len(labels)).tolist()
    return new_model(MODEL_CFG, CLASSES, priors)


def cpu_batches(data: tuple[torch.Tensor, torch.Tensor], args: argparse.Namespace, *, train: bool,
                augment: Augment | None = None) -> Batches:
    """``recipe.train.session.batches`` on the CPU with ``--batch-size`` and ``--seed`` (shuffled when ``train``)."""
    return batches(data, batch_size=args.batch_size, train=train, seed=args.seed, device=CPU, augment=augment)


def adamw(model: nn.Module, lrs: list[float]) -> torch.optim.Optimizer:
    """The stages' optimizer: conf/optim/adamw.yaml over ``param_groups`` with one rate per layer group."""
    return make_optimizer(param_groups(model, lrs, weight_decay=ADAMW.weight_decay,
                                       bn_weight_decay=ADAMW.bn_weight_decay, l1=ADAMW.l1),
                          name=ADAMW.name, betas=list(ADAMW.betas), eps=ADAMW.eps)


def fit_epoch(module: nn.Module, train: Batches, valid: Batches, opt: torch.optim.Optimizer, **kwargs) -> float:
    """Seconds of ``fit(epochs=1)`` (constant schedule, cross-entropy, ``resume=None``, its table discarded);
    the schedule is built before the clock starts."""
    sched = make_schedule(opt, name="constant", epochs=1, steps_per_epoch=len(train))
    loss_fn = nn.CrossEntropyLoss()
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        fit(module, train=train, valid=valid, epochs=1, optimizer=opt, schedule=sched, loss_fn=loss_fn, resume=None,
            **kwargs)
    return time.perf_counter() - t


def print_header(title: str, versions: str = "") -> None:
    """The title line, then the machine and the library versions (``versions`` appended to the last line)."""
    print(title)
    print(f"{platform.platform()} | {platform.processor() or platform.machine()} | os.cpu_count()={os.cpu_count()} "
          f"| torch threads {torch.get_num_threads()}")
    print(f"python {sys.version.split()[0]} | torch {torch.__version__}{versions}")


def spread(ts: list[float], fmt: str) -> str:
    """min, median and max of ``ts``, each formatted with ``fmt``, separated by spaces."""
    return f"{min(ts):{fmt}} {statistics.median(ts):{fmt}} {max(ts):{fmt}}"
