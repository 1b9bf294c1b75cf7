"""BatchNorm folded into the convolutions: the graph select and evaluate score and export ships.

Contract: :func:`fold_bn` returns an eval-mode copy of a model in which every ``Conv2d`` whose
output goes straight into a ``BatchNorm2d`` is replaced by ``torch.nn.utils.fusion.fuse_conv_bn_eval``
of the pair (PyTorch's own arithmetic) and the BatchNorm by ``Identity``. The pairs are found by
running the model once on a small input: a BatchNorm whose input is the very tensor a
convolution just returned. ``torch.fx``'s ``fuse`` would be the textbook tool, but it cannot trace
EfficientNet-Lite's "same" padding (it branches on the input's shape). A pair is folded only
when the BatchNorm gets the convolution's output untouched, each runs once, and the model's
output on a probe input does not move. The folded model computes what the model does (to float
rounding: about 1e-6 in the logits) with one layer fewer per pair: on the 2 CPU cores, Lite0 at
224 px, batch 32, 50.5 images/s against the checkpoint's 41.7 (``python bench/export.py``). select scores
its candidates, and evaluate the chosen model and each stage's checkpoint, folded; export ships
the folded graph.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from recipe.decide.ensemble import Ensemble


def fold_bn(model: nn.Module, *, channels: int, side: int) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``model`` with each Conv2d -> BatchNorm2d pair folded into one
    Conv2d (with a bias); the number of pairs folded. ``channels`` and ``side`` shape the probe
    input the pairs are found and checked with. A pair is a candidate when the BatchNorm's input
    is the convolution's output untouched (the same tensor, not modified in place since) and each
    of the two runs once; the candidates are folded together and the probe run once more: when
    the output did not move they are kept, else they are undone and tried one by one, each kept
    only if the output does not move (a convolution whose raw output is also used elsewhere
    would move it)."""
    model = copy.deepcopy(model).eval()
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []
    calls: dict[int, int] = {}
    last: dict = {}

    def after_conv(conv, _inp, out):
        calls[id(conv)] = calls.get(id(conv), 0) + 1
        last.update(conv=conv, out=out, version=out._version)

    def before_bn(bn, inp):
        calls[id(bn)] = calls.get(id(bn), 0) + 1
        if last.get("out") is inp[0] and inp[0]._version == last["version"]:  # not an in-place op's result
            pairs.append((last["conv"], bn))
        last.clear()

    probe = torch.rand(2, channels, side, side, generator=torch.Generator().manual_seed(0))
    first = next(iter(model.parameters()), None)
    probe = probe if first is None else probe.to(first.device)
    hooks = [m.register_forward_hook(after_conv) if isinstance(m, nn.Conv2d) else m.register_forward_pre_hook(before_bn)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    try:
        with torch.no_grad():
            ref = model(probe)
    finally:
        for h in hooks:
            h.remove()
    parent = {child: (mod, name) for mod in model.modules() for name, child in mod.named_children()}
    tol = 1e-4 * (1 + float(ref.abs().max()))
    candidates = [(conv, bn) for conv, bn in pairs  # a module run twice: folding would change its other use
                  if calls[id(conv)] == 1 and calls[id(bn)] == 1]
    swaps = {pair: [(parent[pair[0]], pair[0], fuse_conv_bn_eval(*pair)), (parent[pair[1]], pair[1], nn.Identity())]
             for pair in candidates}

    def put(pair, fold: bool) -> None:  # the folded convolution and an Identity, or the two modules back
        for (owner, name), old, new in swaps[pair]:
            setattr(owner, name, new if fold else old)

    def moved() -> float:
        with torch.no_grad():
            return float((model(probe) - ref).abs().max())

    for pair in candidates:  # all at once, checked once: what a model of plain conv -> BN pairs needs
        put(pair, True)
    if moved() <= tol:
        return model, len(candidates)
    folded = 0
    for pair in candidates:  # else pair by pair, keeping those that do not move the output
        put(pair, False)
    for pair in candidates:
        put(pair, True)
        if moved() <= tol:
            folded += 1
        else:
            put(pair, False)
    return model, folded


def fold_member(model: nn.Module, *, channels: int, size: int) -> tuple[nn.Module, int]:
    """:func:`fold_bn` of a network trained at ``size`` px, probed at that size up to 64 px."""
    return fold_bn(model, channels=channels, side=min(64, size))


def fold_ensemble(model: Ensemble) -> tuple[Ensemble, int]:
    """A copy of the ensemble with every member folded (:func:`fold_member`); the pairs folded."""
    folded = copy.deepcopy(model).eval()
    total = 0
    for i, member in enumerate(folded.members):
        folded.members[i], n = fold_member(member, channels=folded.channels, size=folded.sizes[i])
        total += n
    return folded, total
