"""Karpathy's checks ("A Recipe for Training Neural Networks", 2019), each a number and a verdict.

Contract: each ``check_*`` function returns a :class:`Check` (name, value, limit, passed, detail).
The stage collects them; a failed one stops it with the check's own message unless
``on_fail: warn``. The simple model (:class:`SimpleNet`, conv-bn-relu blocks trained from
scratch) and the majority class are the numbers a pretrained model must beat.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from recipe.data.loader import Batches
from recipe.fit import evaluate
from recipe.models import Classifier, freeze_to


@dataclass
class Check:
    name: str
    value: float
    limit: float
    passed: bool
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


def prior_entropy(priors: list[float]) -> float:
    """The loss of predicting the class frequencies: what a well-initialised model starts at."""
    return -sum(p * math.log(p) for p in priors if p > 0)


@torch.no_grad()
def check_init_loss(model: Classifier, train: Batches, *, batches: int, priors: list[float], prior_bias: bool,
                    tolerance: float) -> tuple[Check, dict]:
    """Loss at init vs its expectation: the prior entropy with a prior bias, else ln(classes)."""
    model.eval()
    losses = []
    for i, (x, y) in enumerate(train.epoch(0)):
        if i >= batches:
            break
        losses.append(nn.functional.cross_entropy(model(x).float(), y).item())
    loss = sum(losses) / len(losses)
    ln_c = math.log(len(priors))
    expected = prior_entropy(priors) if prior_bias else ln_c
    gap = abs(loss - expected)
    check = Check("init_loss", loss, expected, gap <= tolerance,
                  f"loss at init {loss:.4f} vs expected {expected:.4f} (ln C = {ln_c:.4f}): off by {gap:.4f} nats, "
                  f"tolerance {tolerance}")
    return check, {"init_loss": loss, "ln_classes": ln_c, "prior_entropy": prior_entropy(priors)}


def check_zero_input(head: nn.Module, real: Batches, zero: Batches, valid_real: Batches, valid_zero: Batches, *,
                     steps: int, lr: float, margin: float) -> tuple[Check, dict]:
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
                loss = nn.functional.cross_entropy(h(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                if step >= steps:
                    break
            epoch += 1
        results[name] = evaluate(h, valid, loss_fn=nn.functional.cross_entropy)["loss"]
    gain = results["zero"] - results["real"]
    check = Check("input_independent", gain, margin, gain >= margin,
                  f"valid loss with real inputs {results['real']:.4f} vs zeroed inputs {results['zero']:.4f}: "
                  f"real is better by {gain:.4f} nats, needs {margin}")
    return check, {"zero_input_valid_loss": results["zero"], "real_input_valid_loss": results["real"]}


def check_overfit(model: Classifier, x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float,
                  max_loss: float) -> Check:
    """Every layer trainable, one batch, Adam: the loss must get near zero. The model runs in
    eval mode while it learns (no dropout, no stochastic depth, BatchNorm on its running
    statistics): the question is whether the network can memorise, not how it regularises."""
    freeze_to(model, 0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.eval()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        model.eval()
        final = nn.functional.cross_entropy(model(x).float(), y).item()
    return Check("overfit_one_batch", final, max_loss, final < max_loss,
                 f"loss on one batch of {len(y)} after {steps} steps: {final:.4f}, needs < {max_loss}"
                 + ("" if final < max_loss else f" (over by {final - max_loss:.4f})"))


class SimpleNet(nn.Module):
    """Four conv-bn-relu blocks (width, 2w, 4w, 8w channels; each halves the size), average
    pooling and a linear layer: the small model trained from scratch."""

    def __init__(self, channels: int, classes: int, width: int):
        super().__init__()
        layers, c = [], channels
        for i in range(4):
            w = width * 2 ** i
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c = w
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x * 2 - 1).mean(dim=(2, 3)))
