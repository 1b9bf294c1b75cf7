"""What every training stage shares: device, seeds, data, batches, checkpoints, cached features.

Checkpoint format (one for every stage, read by the next stage and by ``predict``): a dict of
plain values and tensors, loadable with ``torch.load(..., weights_only=True)``::

    {"format": 1, "model": state_dict, "classes": [...], "size": px, "channels": 1 or 3,
     "model_config": {...}, "stage": "finetune", "epoch": n[, "multi_label": True]}

``channels`` is what the training images had (1: grayscale, repeated to 3 inside the model),
so ``predict`` prepares a user's images the same way.

The state dict includes the normalisation (mean/std buffers), so nothing else is needed.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recipe.core import distributed
from recipe.core.errors import ConfigError, DataError
from recipe.core.layout import RAW
from recipe.data.loader import Batches, ImageSet, load_split
from recipe.data.split import LABELS, class_names, read_split
from recipe.train.augment import Augment
from recipe.train.models import Classifier, build_model
from recipe.train.schema import ModelConfig

CHECKPOINT_FORMAT = 1


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = 'cuda': no CUDA device is available here (use auto or cpu)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("train.device = 'mps': MPS is not available here (use auto or cpu)")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Data:
    train: ImageSet
    valid: ImageSet
    classes: list[str]

    @property
    def multi_label(self) -> bool:
        return self.train.multi_label

    @property
    def priors(self) -> list[float]:
        """Each class's share of the train images; with several labels per image, the share of
        them that hold each label (each its own yes/no prior)."""
        if self.multi_label:
            return self.train.labels.double().mean(0).tolist()
        counts = torch.bincount(self.train.labels, minlength=len(self.classes)).double()
        return (counts / counts.sum()).tolist()


def load_data(split_csv: Path, raw: Path, *, size: int, workers: int, splits: tuple[str, ...] = ("train", "valid")) -> Data:
    table = read_split(split_csv)
    classes = class_names(table)
    if len(classes) < (1 if LABELS in table.columns else 2):
        raise DataError(f"{split_csv}: {len(classes)} class(es); a classifier needs at least 2")
    sets = {s: load_split(table, Path(raw) / RAW.files, split=s, size=size, classes=classes, workers=workers)
            for s in splits}
    # Each split is 1-channel only if all its images are grayscale; one channel count for all of them.
    if len({s.images.shape[1] for s in sets.values()}) > 1:
        for s in sets.values():
            s.images = s.images.expand(-1, 3, -1, -1).contiguous()
    return Data(sets["train"], sets["valid"], classes)


def batches(images: ImageSet | tuple[torch.Tensor, torch.Tensor], *, batch_size: int, train: bool, seed: int,
            device: torch.device, augment: Augment | None = None, channels_last: bool = False,
            balance: torch.Tensor | None = None, mix=None) -> Batches:
    """Batches of ``images`` (or of ``(x, y)`` tensors). ``train``: shuffled, augmented, sliced per
    rank under DDP; with ``balance`` (each image's class index), drawn class-balanced: an image
    of class c with probability proportional to 1 / (c's count), so each class fills about the
    same share of every epoch; with ``mix`` (training only), each batch of images mixed
    (:func:`recipe.train.augment.mix` with its settings bound)."""
    if isinstance(images, ImageSet):  # training batches carry the soft targets when the split has them
        x, y = images.images, (images.training_targets if train else images.labels)
    else:
        x, y = images
    aug = augment if (train and augment is not None and augment.active) else None
    # Dropping a last batch of 1 avoids BatchNorm's "expected more than 1 value" in training.
    drop_last = train and len(y) > 1 and len(y) % batch_size == 1
    weights = None
    if train and balance is not None:
        labels = torch.as_tensor(balance).long()
        weights = 1.0 / torch.bincount(labels).double()[labels]
    return Batches(x, y, batch_size=batch_size, shuffle=train, seed=seed, device=device, augment=aug,
                   drop_last=drop_last, channels_last=channels_last, shard=distributed.shard() if train else None,
                   weights=weights, mix=mix if train else None)


def new_model(model_cfg: ModelConfig, classes: list[str], priors: list[float] | None,
              multi_label: bool = False) -> Classifier:
    h = model_cfg.head
    return build_model(name=model_cfg.name, weights=model_cfg.weights, mean=model_cfg.mean, std=model_cfg.std,
                       classes=len(classes), pool=h.pool, dropout=h.dropout, init=h.init, init_gain=h.init_gain,
                       priors=priors if h.prior_bias else None, arch=getattr(model_cfg, "arch", None),  # only TimmConfig has an arch
                       multi_label=multi_label)


def save_checkpoint(path: Path, model: Classifier, *, classes: list[str], size: int, model_config: dict,
                    stage: str, epoch: int, channels: int = 3, multi_label: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": CHECKPOINT_FORMAT, "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             "classes": list(classes), "size": int(size), "channels": int(channels), "model_config": model_config,
             "stage": stage, "epoch": int(epoch)}
    if multi_label:  # several labels per image: a sigmoid per label (only then, so other checkpoints keep their bytes)
        state["multi_label"] = True
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def load_state(path: Path) -> dict:
    """A checkpoint file's contents (``weights_only=True``), checked to be one of ours."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found (run the stage that writes it)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{path}: not a finetune-recipe checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def model_from_state(state: dict) -> Classifier:
    """The model (CPU, eval mode) a checkpoint's contents describe."""
    cfg = state["model_config"]
    h = cfg["head"]
    model = build_model(name=cfg["name"], weights=None, mean=cfg["mean"], std=cfg["std"],
                        classes=len(state["classes"]), pool=h["pool"], dropout=h["dropout"], init=h["init"],
                        init_gain=h["init_gain"], priors=None, arch=cfg.get("arch"))
    model.load_state_dict(state["model"])
    return model.eval()


def load_checkpoint(path: Path) -> tuple[Classifier, dict]:
    """The model (on the CPU, eval mode) and the checkpoint's metadata."""
    state = load_state(path)
    return model_from_state(state), {k: v for k, v in state.items() if k != "model"}


@torch.no_grad()
def features(model: Classifier, data: Batches, *, amp: bool = False) -> torch.Tensor:
    """Pooled body features of every image (body in eval mode): fast.ai's precompute."""
    from recipe.train.fit import autocast

    was = model.training
    model.eval()
    out = []
    for x, _ in data:
        with autocast(data.device, amp):
            out.append(model.head.pooled(model.features(x)).float().cpu())
    model.train(was)
    return torch.cat(out)


@torch.no_grad()
def refresh_bn(model: Classifier, data: Batches) -> int:
    """Re-estimate every BatchNorm's running statistics over ``data`` (cumulative average),
    e.g. after progressive resizing changed the image size. Returns the layers refreshed."""
    bns = [m for m in model.body.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # None: an equal-weight average over all batches seen
    was = model.training
    model.eval()  # only the BatchNorm layers in train mode: no dropout or stochastic depth
    for m in bns:
        m.train()
    for x, _ in data:
        model.features(x)
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    model.train(was)
    return len(bns)


def fingerprint(*parts: Any, files: tuple[Path, ...] = ()) -> str:
    """Identifies a training run's settings and inputs, so a resume state is only reused for
    the same ones."""
    h = hashlib.sha256(repr(parts).encode())
    for f in files:
        h.update(Path(f).read_bytes() if Path(f).is_file() else b"-")
    return h.hexdigest()[:16]
