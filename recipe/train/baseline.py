"""Karpathy's checks ("A Recipe for Training Neural Networks", 2019), each a number and a verdict.

Contract: each ``check_*`` function returns a :class:`Check` (name, value, limit, passed, detail).
The stage collects them; a failed one stops it with the check's own message unless
``on_fail: warn``. The simple model (:class:`SimpleNet`, conv-bn-relu blocks trained from
scratch) and the majority class are the numbers a pretrained model must beat; the simple model
and a wider one, both fitting a few training images, are the capacity check (:func:`check_capacity`).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from recipe.core.errors import ConfigError, RecipeError
from recipe.data.loader import Batches
from recipe.data.split import LABELS, read_split
from recipe.report import plots
from recipe.train.fit import fit, validate
from recipe.train.learner import Common, pretrained
from recipe.train.models import Classifier, freeze_to
from recipe.train.optim import make_schedule
from recipe.train.pixels import fit_pixels
from recipe.train.schema import BaselineConfig, SimpleModelConfig
from recipe.train.session import Data, batches, features, load_data


class CheckFailed(RecipeError):
    """A check failed with ``baseline.on_fail: error``."""


@dataclass
class Check:
    name: str
    value: float
    limit: float
    passed: bool
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


def prior_entropy(priors: list[float], multi_label: bool = False) -> float:
    """The loss of predicting the class frequencies: what a well-initialised model starts at. With
    several labels per image, the binary cross-entropy of predicting each label's frequency, the
    mean over labels (the loss averages over them too)."""
    if multi_label:
        return sum(-sum(q * math.log(q) for q in (p, 1 - p) if q > 0) for p in priors) / len(priors)
    return -sum(p * math.log(p) for p in priors if p > 0)


@torch.no_grad()
def check_init_loss(model: Classifier, train: Batches, *, batches: int, priors: list[float], prior_bias: bool,
                    tolerance: float, loss_fn: Callable = nn.functional.cross_entropy,
                    multi_label: bool = False) -> tuple[Check, dict]:
    """Loss at init vs its expectation: the prior entropy with a prior bias, else ln(classes) (with
    several labels per image, ln 2: every sigmoid at 1/2)."""
    model.eval()
    losses = []
    for i, (x, y) in enumerate(train.epoch(0)):
        if i >= batches:
            break
        losses.append(loss_fn(model(x).float(), y).item())
    loss = sum(losses) / len(losses)
    ln_c = math.log(2 if multi_label else len(priors))
    expected = prior_entropy(priors, multi_label) if prior_bias else ln_c
    gap = abs(loss - expected)
    check = Check("init_loss", loss, expected, gap <= tolerance,
                  f"loss at init {loss:.4f} vs expected {expected:.4f} (ln C = {ln_c:.4f}): off by {gap:.4f} nats, "
                  f"tolerance {tolerance}")
    return check, {"init_loss": loss, "ln_classes": ln_c, "prior_entropy": prior_entropy(priors, multi_label)}


def check_zero_input(head: nn.Module, real: Batches, zero: Batches, valid_real: Batches, valid_zero: Batches, *,
                     steps: int, lr: float, margin: float,
                     loss_fn: Callable = nn.functional.cross_entropy) -> tuple[Check, dict]:
    """Train two copies of the head for ``steps`` steps, on real features and on the features of
    all-zero images; real inputs must give a lower valid loss by at least ``margin``."""
    import copy

    results = {}
    for name, train, valid in (("real", real, valid_real), ("zero", zero, valid_zero)):
        h = copy.deepcopy(head)
        opt = torch.optim.AdamW(h.parameters(), lr=lr)
        h.train()
        step, epoch = 0, 0
        while step < steps:
            for x, y in train.epoch(epoch):
                loss = loss_fn(h(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                if step >= steps:
                    break
            epoch += 1
        results[name] = validate(h, valid, loss_fn=loss_fn)["loss"]
    gain = results["zero"] - results["real"]
    check = Check("input_independent", gain, margin, gain >= margin,
                  f"valid loss with real inputs {results['real']:.4f} vs zeroed inputs {results['zero']:.4f}: "
                  f"real is better by {gain:.4f} nats, needs {margin}")
    return check, {"zero_input_valid_loss": results["zero"], "real_input_valid_loss": results["real"]}


def check_batch_dependencies(model: nn.Module, x: torch.Tensor) -> tuple[Check, dict]:
    """Karpathy's "use backprop to chart dependencies": for each sample i of the batch, the loss
    of sample i alone (here the sum of its logits), backpropagated to the inputs, must give a
    non-zero gradient on input i and exactly zero on every other input. A view or transpose that
    mixes the batch fails it. Run in eval mode: in train mode BatchNorm normalises by the batch's
    statistics, so every sample's output depends on every input by design; that figure is
    reported too (``batch_dependency_train_mode``), not judged."""
    def largest(net: nn.Module, train: bool) -> tuple[float, float]:
        net.train(train)
        xs = x.detach().clone().requires_grad_(True)
        out = net(xs).float()
        own, cross = float("inf"), 0.0
        for i in range(len(xs)):
            (g,) = torch.autograd.grad(out[i].sum(), xs, retain_graph=i < len(xs) - 1)
            g = g.abs().flatten(1).amax(1)
            own = min(own, g[i].item())
            cross = max(cross, torch.cat([g[:i], g[i + 1:]]).max().item())
        return own, cross

    was = model.training
    own, cross = largest(model, False)
    model.train(was)
    # A copy for train mode (its forward pass updates BatchNorm's running statistics), with the
    # random state restored after it (stochastic depth draws in train mode).
    with torch.random.fork_rng(devices=[]):
        _, cross_train = largest(copy.deepcopy(model), True)
    passed = own > 0 and cross == 0
    detail = (f"eval mode, {len(x)} images: the smallest gradient of a sample's loss on its own input "
              f"{own:.3g}, the largest on another input {cross:.3g} (needs > 0 and exactly 0); in train mode "
              f"{cross_train:.3g} (BatchNorm mixes the batch by design, not judged)")
    return Check("batch_dependencies", cross, 0.0, passed, detail), {
        "batch_dependency_own": own, "batch_dependency_cross": cross, "batch_dependency_train_mode": cross_train}


def _memorise(model: Classifier, x: torch.Tensor, y: torch.Tensor, *, max_steps: int, lr: float,
              max_loss: float) -> tuple[float, int, torch.Tensor, float]:
    """Adam at ``lr`` on every layer until the batch's loss is below ``max_loss`` or ``max_steps``
    steps are spent: the final loss, the steps, each image's loss, and the largest spread of a
    logit over the batch (about 0 when every image gets the same output)."""
    freeze_to(model, 0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.eval()
    steps = 0
    while True:
        logits = model(x).float()
        per_image = (nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(1)
                     if y.dim() == 2 else nn.functional.cross_entropy(logits, y, reduction="none"))
        loss = per_image.mean()
        if loss.item() < max_loss or steps >= max_steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    spread = logits.detach().std(0).max().item() if len(x) > 1 else float("nan")
    return loss.item(), steps, per_image.detach(), spread


def check_overfit(model: Classifier, x: torch.Tensor, y: torch.Tensor, *, max_steps: int, lr: float, max_loss: float,
                  paths: list[str], classes: list[str], lookalikes: dict[str, list[tuple[str, str]]],
                  retries: int = 0) -> tuple[Check, dict]:
    """Every layer trainable, one batch, Adam, until the loss on the batch is below ``max_loss``
    (within ``max_steps`` steps): a pipeline that can learn gets there. The model runs in eval
    mode while it learns (no dropout, no stochastic depth, BatchNorm on its running statistics):
    the question is whether the network can memorise, not how it regularises. Each loss is
    measured before the step it drives, so the one that ends the loop is the final weights'.

    A rate too high for the network can wreck it instead (EfficientNet-Lite2 on ELPV at seed 42:
    after 300 steps at 0.001 every image gets the same output; from the same weights at 0.0001,
    25 steps): when the budget runs out, the check starts again from the same weights at a tenth
    of the rate, up to ``retries`` times, and passes at the first rate that memorises; the detail
    says what each rate did.

    When every rate fails, the detail names the images still above ``max_loss`` at the last one
    (path, label, own loss) and, from ``lookalikes`` (path -> ``(path, label)`` of its duplicate
    group with another label), whether each has a look-alike labelled otherwise: a finding about
    the data (an ambiguous or mislabelled image), not about the pipeline."""
    start = copy.deepcopy(model.state_dict()) if retries else None
    tried = []
    for k in range(retries + 1):
        rate = lr / 10 ** k
        if k:
            model.load_state_dict(start)
        final, steps, per_image, spread = _memorise(model, x, y, max_steps=max_steps, lr=rate, max_loss=max_loss)
        passed = final < max_loss
        same = " (every image got the same output: the rate wrecked the network)" if spread < 1e-2 else ""
        tried.append({"lr": rate, "steps": steps, "loss": final, "output_spread": spread})
        if passed:
            break
        tried[-1]["note"] = f"at lr {rate:g}: {final:.4f} after {steps} steps{same}"
    earlier = "; ".join(t["note"] for t in tried[:-1])
    numbers = {"overfit_loss": final, "overfit_steps": steps, "overfit_lr": rate, "overfit_tries": len(tried),
               "overfit_not_memorised": []}
    if passed:
        return Check("overfit_one_batch", final, max_loss, True,
                     f"loss on one batch of {len(y)} below {max_loss} after {steps} steps: {final:.4f} "
                     f"(budget {max_steps})" + (f" at lr {rate:g}; {earlier}" if earlier else "")), numbers
    losses = per_image.detach().cpu().tolist()
    stuck = sorted((k for k, v in enumerate(losses) if v >= max_loss), key=lambda k: -losses[k])
    for k in stuck:
        numbers["overfit_not_memorised"].append({
            "path": paths[k], "label": label_name(y[k], classes), "loss": round(losses[k], 4),
            "lookalikes_other_label": [{"path": p, "label": lab} for p, lab in lookalikes.get(paths[k], [])]})
    named = []
    for r in numbers["overfit_not_memorised"]:
        others = r["lookalikes_other_label"]  # all of them in metrics.json; three in the detail
        mates = ", ".join(f"{o['path']} ({o['label']})" for o in others[:3]) + (
            f" and {len(others) - 3} more" if len(others) > 3 else "")
        named.append(f"{r['path']} ({r['label']}, loss {r['loss']:.4f}, "
                     + (f"look-alike with another label: {mates})" if mates
                        else "no look-alike with another label in its duplicate group)"))
    lookalike = any(r["lookalikes_other_label"] for r in numbers["overfit_not_memorised"])
    finding = (" An image with a look-alike labelled otherwise is a finding about the data (ambiguous or "
               "mislabelled), not a pipeline bug." if lookalike else "")
    return Check("overfit_one_batch", final, max_loss, False,
                 f"loss on one batch of {len(y)} after {steps} steps (the budget, baseline.overfit.max_steps): "
                 f"{final:.4f}, needs < {max_loss} (over by {final - max_loss:.4f}); "
                 f"not memorised: {'; '.join(named)}.{finding}"
                 + (f" Every rate tried: {earlier}; {tried[-1]['note']}." if earlier else "")), numbers


def label_name(y: torch.Tensor, classes: list[str]) -> str:
    """An image's label as words: its class, or the labels it holds joined by a space (several
    labels per image; "" for none)."""
    if y.dim() == 1:
        return " ".join(c for c, v in zip(classes, y.tolist()) if v > 0.5)
    return classes[int(y)]


def other_label_lookalikes(table: pd.DataFrame, paths: list[str]) -> dict[str, list[tuple[str, str]]]:
    """For each of ``paths``: the ``(path, label)`` of every other row of its duplicate group (the
    split's ``group`` column: the audit's exact and near duplicates) with a different label (or
    label list)."""
    if "group" not in table.columns:
        return {}
    column = LABELS if LABELS in table.columns else "label"
    rows = table.set_index("path")
    out = {}
    for p in paths:
        if p not in rows.index:
            continue
        group, label = rows.at[p, "group"], rows.at[p, column]
        mates = table[(table["group"] == group) & (table[column] != label)]
        out[p] = list(zip(mates["path"], mates[column]))
    return out


# The small model's activations: name -> a new module. Adding one is one entry here.
ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True),  # PyTorch's default negative slope
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


class SimpleNet(nn.Module):
    """Four conv-bn-activation blocks (width, 2w, 4w, 8w channels; each halves the size), average
    pooling and a linear layer: the small model trained from scratch. ``activation`` is a key of
    :data:`ACTIVATIONS` (the seed's advice, "ReLU for vision", can be checked on a dataset)."""

    def __init__(self, channels: int, classes: int, width: int, activation: str):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"baseline.simple.activation = {activation!r}: not one of {', '.join(ACTIVATIONS)}")
        layers, c = [], channels
        for i in range(4):
            w = width * 2 ** i
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), ACTIVATIONS[activation](),
                       nn.MaxPool2d(2)]
            c = w
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x * 2 - 1).mean(dim=(2, 3)))


# --- the stage ------------------------------------------------------------------------------

def _batch_picture(common: Common, cfg: BaselineConfig, data: Data, device: torch.device, picture: Path) -> None:
    """Nothing: writes what the network sees, one augmented training batch after every transform, to ``picture``."""
    x, y = next(iter(common.batches(data.train, device, train=True).epoch(0)))
    k = min(cfg.picture_images, len(y))
    plots.tensor_grid(x[:k].float().cpu().numpy(), [label_name(v, data.classes) for v in y[:k].cpu()], picture,
                      f"A training batch as the network gets it ({common.train.image_size} px, after augmentation)")


def _zero_input(model: Classifier, plain_train: Batches, common: Common, cfg: BaselineConfig, data: Data,
                device: torch.device) -> tuple[Check, dict]:
    """The input-independent baseline on cached features (:func:`check_zero_input`): real images vs all-zero images."""
    f_train = features(model, plain_train)
    f_valid = features(model, common.batches(data.valid, device, train=False))
    zero = features(model, common.batches((torch.zeros_like(data.train.images[:1]), data.train.labels[:1]),
                                          device, train=False))
    feat = lambda f, labels, train: batches((f, labels), batch_size=common.train.batch_size, train=train,
                                            seed=common.seed, device=device)
    return check_zero_input(
        model.head, feat(f_train, data.train.labels, True), feat(zero.expand(len(f_train), -1), data.train.labels, True),
        feat(f_valid, data.valid.labels, False), feat(zero.expand(len(f_valid), -1), data.valid.labels, False),
        steps=cfg.zero_input_steps, lr=cfg.simple.lr, margin=cfg.zero_input_margin,
        loss_fn=common.loss(multi_label=data.multi_label))


def _overfit(model: Classifier, common: Common, cfg: BaselineConfig, data: Data, device: torch.device,
             split: Path) -> tuple[Check, dict]:
    """The overfit-one-batch check (:func:`check_overfit`) on ``cfg.overfit.images`` train images drawn with the seed."""
    gen = torch.Generator().manual_seed(common.seed)
    idx = torch.randperm(len(data.train), generator=gen)[: cfg.overfit.images]
    xb = data.train.images[idx].to(device).float().div(255)
    yb = data.train.labels[idx].to(device)
    paths = [data.train.paths[i] for i in idx.tolist()]
    return check_overfit(model, xb, yb, max_steps=cfg.overfit.max_steps, lr=cfg.overfit.lr,
                         max_loss=cfg.overfit.max_loss, retries=cfg.overfit.retries, paths=paths, classes=data.classes,
                         lookalikes=other_label_lookalikes(read_split(split), paths))


def run(common: Common, cfg: BaselineConfig, *, split: Path, raw: Path, picture: Path, candidates: Path) -> dict:
    """The baseline stage: every check above and the numbers to beat, as one metrics dict; the
    logistic regression on the pixels saved as ``candidates/pixels.pt`` (a candidate of select's;
    the folder is left empty when ``baseline.pixels.side`` is null)."""
    t0 = time.perf_counter()
    device = common.start()
    data = load_data(split, raw, size=common.train.image_size, workers=common.train.workers)
    # The checks are about the pipeline, on the hard labels: one batch can overfit to a loss of
    # 0 only if its targets are one-hot.
    data.train.targets = None
    priors = data.priors
    model = pretrained(common, data, device)
    _batch_picture(common, cfg, data, device, picture)

    checks, numbers = [], {}
    plain_train = common.batches(data.train, device, train=False)
    # Shuffled (the split file may be ordered by class), not augmented.
    shuffled = common.batches(data.train, device, train=True, augment=False)
    check, n = check_init_loss(model, shuffled, batches=cfg.init_batches, priors=priors,
                               prior_bias=common.model.head.prior_bias, tolerance=cfg.init_tolerance,
                               loss_fn=common.loss(multi_label=data.multi_label), multi_label=data.multi_label)
    checks.append(check)
    numbers.update(n)

    # Does any sample's output depend on another sample's input? (On a few plain train images.)
    check, n = check_batch_dependencies(model, data.train.images[: cfg.dependency_images].to(device).float().div(255))
    checks.append(check)
    numbers.update(n)

    check, n = _zero_input(model, plain_train, common, cfg, data, device)
    checks.append(check)
    numbers.update(n)

    numbers.update(majority(data, priors))

    # The simple model, from scratch, at a small size; and the capacity check (the same, wider).
    n, check = _simple_model(common, cfg.simple, data, device)
    numbers.update(n)
    if check is not None:
        checks.append(check)

    Path(candidates).mkdir(parents=True, exist_ok=True)
    for old in Path(candidates).glob("*.pt"):
        old.unlink()
    if cfg.pixels.side is not None:
        numbers.update(fit_pixels(common, data, device, side=cfg.pixels.side, strengths=cfg.pixels.C,
                                  out=Path(candidates) / "pixels.pt", size=common.train.image_size))
    check, n = _overfit(model, common, cfg, data, device, split)  # last: it changes the model
    checks.append(check)
    numbers.update(n)
    metrics = {"checks": {c.name: c.as_dict() for c in checks}, **numbers,
               "classes": len(data.classes), "prior_entropy": prior_entropy(priors, data.multi_label),
               "passed": all(c.passed for c in checks), "time_s": round(time.perf_counter() - t0, 1)}
    for c in checks:
        print(f"baseline: {'ok  ' if c.passed else 'FAIL'} {c.name}: {c.detail}")
    print(f"baseline: majority class {numbers['majority_class']!r} valid accuracy {numbers['majority_accuracy']:.4f}; "
          f"simple model valid accuracy {numbers['simple_accuracy']:.4f}"
          + (f"; logistic regression on {cfg.pixels.side} px pixels {numbers['pixels_accuracy']:.4f} "
             f"(C={numbers['pixels_C']:g})" if "pixels_accuracy" in numbers else ""))
    return metrics


def majority(data: Data, priors: list[float]) -> dict:
    """The input-independent answer to beat, on valid: the most frequent training class (its
    accuracy); with several labels per image, each label's training frequency as its probability
    (``prior_valid_loss``, the binary cross-entropy to beat) and its more frequent answer, yes or
    no (``majority_accuracy``, over every image and label)."""
    if not data.multi_label:
        best = int(torch.argmax(torch.tensor(priors)))
        return {"majority_class": data.classes[best],
                "majority_accuracy": (data.valid.labels == best).float().mean().item()}
    p = torch.tensor(priors).clamp(1e-7, 1 - 1e-7).expand_as(data.valid.labels)
    return {"majority_class": "each label's prior",
            "majority_accuracy": ((p > 0.5).float() == data.valid.labels).float().mean().item(),
            "prior_valid_loss": nn.functional.binary_cross_entropy(p, data.valid.labels).item()}


def failed_checks(metrics: dict) -> list[str]:
    return [f"check {name} failed: {c['detail']}" for name, c in metrics["checks"].items() if not c["passed"]]


def _shrink(images: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False).round().clamp(0, 255).to(torch.uint8)


def check_capacity(narrow: float, wide: float, *, width: int, capacity_width: int, images: int,
                   epochs: int, fitted: float | None = None) -> tuple[Check, dict]:
    """Karpathy's "verify decreasing training loss": the small model at ``width`` and at the wider
    ``capacity_width``, trained identically on the same ``images`` training images without
    augmentation for ``epochs``; ``narrow`` and ``wide`` are their final losses on those images
    (eval mode). More capacity must fit a fixed training set better, so the wider net's loss must
    be lower. A loss that does not answer to capacity (a layer that does not train, a rate of 0,
    targets the inputs do not determine) fails it. When both losses are under ``fitted``, both nets
    memorised the set and their order is noise (ELPV seed 1: 0.0160 against 0.0261): that passes too."""
    a, b = narrow, wide
    both_fitted = fitted is not None and max(a, b) < fitted
    passed = b < a or both_fitted
    detail = (f"training loss (eval mode) on {images} train images fitted for {epochs} epoch{'s' * (epochs != 1)} "
              f"without augmentation, width {width}: {a:.4f}, width {capacity_width}: {b:.4f}: the wider net is "
              + (f"lower by {a - b:.4f}" if b < a else
                 f"not lower, but both fitted the set (under {fitted:g})" if both_fitted else
                 f"not lower (higher by {b - a:.4f}; needs lower, or both under {fitted:g})" if fitted is not None else
                 f"not lower (higher by {b - a:.4f}; needs lower)"))
    numbers = {"capacity_narrow_train_loss": a, "capacity_train_loss": b}
    return Check("capacity", b, a, passed, detail), numbers


def _simple_model(common: Common, cfg: SimpleModelConfig, data: Data,
                  device: torch.device) -> tuple[dict, Check | None]:
    """The simple net at ``cfg.width`` (the number to beat), and with ``cfg.capacity_width`` the
    capacity check: both widths from the same random state, on the same ``capacity_images``
    training images (drawn with the seed, no augmentation: a fixed set to fit), for
    ``capacity_epochs`` at the simple net's rate and schedule."""
    train = (_shrink(data.train.images, cfg.image_size), data.train.labels)
    valid = (_shrink(data.valid.images, cfg.image_size), data.valid.labels)

    def trained(width: int, images, epochs: int, augment: bool, judge=valid) -> list[dict]:
        net = SimpleNet(train[0].shape[1], len(data.classes), width, cfg.activation).to(device)
        tb = common.batches(images, device, train=True, augment=augment)  # seeded by (seed, epoch)
        vb = common.batches(judge, device, train=False)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr)
        sched = make_schedule(opt, epochs=epochs, steps_per_epoch=len(tb), **cfg.schedule.model_dump())
        return fit(net, train=tb, valid=vb, epochs=epochs, optimizer=opt, schedule=sched,
                   loss_fn=common.loss(multi_label=data.multi_label), keep="last", phase=f"simple model, width {width}")

    rows = trained(cfg.width, train, cfg.epochs, True)
    numbers = {"simple_accuracy": rows[-1]["accuracy"], "simple_valid_loss": rows[-1]["valid_loss"],
               "simple_train_loss": rows[-1]["train_loss"]}
    if cfg.capacity_width is None:
        return numbers, None
    t0 = time.perf_counter()
    idx = torch.randperm(len(train[1]), generator=torch.Generator().manual_seed(common.seed))[: cfg.capacity_images]
    subset = (train[0][idx], train[1][idx])
    losses = []
    with torch.random.fork_rng():  # CPU and CUDA: the stage's random state after it is as without the check
        for width in (cfg.width, cfg.capacity_width):
            torch.manual_seed(common.seed)  # both nets' init (and dropout) from the same state
            # judged on the subset itself in eval mode: the loss of the fitted set, free of
            # BatchNorm's batch noise and of the epoch's early batches
            losses.append(trained(width, subset, cfg.capacity_epochs, False, judge=subset)[-1]["valid_loss"])
    check, n = check_capacity(*losses, width=cfg.width, capacity_width=cfg.capacity_width, images=len(idx),
                              epochs=cfg.capacity_epochs, fitted=cfg.capacity_fitted)
    return {**numbers, **n, "capacity_time_s": round(time.perf_counter() - t0, 1)}, check
