"""Batched data augmentation on float images in [0, 1], on whatever device the batch is on.

Contract: ``Augment(**cfg)(x, gen)`` returns a batch of the same shape, each image transformed
with its own random draw from ``gen`` (a CPU ``torch.Generator``), so the same seed gives the
same batch on every device. The config groups in ``conf/augment/`` name the fast.ai presets:

- ``side_on`` (photos of things seen from the side): horizontal flip, small rotation, zoom;
- ``top_down`` (satellite, medical, ELPV cells): both flips and 90-degree rotations, i.e. the
  eight symmetries of the square, which do not change what such an image shows;
- ``none``.

Colour (brightness, contrast), random resized crop, Gaussian blur and noise are options on top.
The ranges the draws come from (``blur_sigma``, ``crop_aspect``) are config too, set once in
conf/config.yaml's ``augment`` section for every preset; nothing here has a default.
Geometric warps are one affine resampling per image (``grid_sample``, reflection padding as
fast.ai does), applied only when a continuous warp is enabled; flips and 90-degree rotations
are exact index permutations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    flip_h: float  # probability of a left-right flip
    flip_v: float  # probability of an up-down flip
    rot90: bool  # rotate by a random multiple of 90 degrees (square images)
    rotate: float  # degrees; uniform in [-rotate, rotate]
    zoom: float  # zoom in by a factor uniform in [1, zoom]
    translate: float  # fraction of the side; uniform shift in [-translate, translate]
    crop_scale: float  # random resized crop: min area fraction (1 = off)
    crop_aspect: tuple[float, float]  # width/height of the warp's window, log-uniform in [low, high]
    brightness: float  # additive, uniform in [-brightness, brightness]
    contrast: float  # multiplicative around the image mean, uniform in [1-contrast, 1+contrast]
    blur: float  # probability of a Gaussian blur
    blur_sigma: tuple[float, float]  # px; the blur's sigma, uniform in [low, high]
    noise: float  # std of additive Gaussian noise (0 = off)

    @property
    def active(self) -> bool:
        return any([self.flip_h, self.flip_v, self.rot90, self.rotate, self.zoom > 1, self.translate,
                    self.crop_scale < 1, self.brightness, self.contrast, self.blur, self.noise])

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n = x.shape[0]

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return (torch.rand(n, generator=gen) * (hi - lo) + lo).to(x.device)

        def coin(p: float) -> torch.Tensor:
            return (torch.rand(n, generator=gen) < p).to(x.device)

        if self.flip_h:
            x = torch.where(coin(self.flip_h)[:, None, None, None], x.flip(3), x)
        if self.flip_v:
            x = torch.where(coin(self.flip_v)[:, None, None, None], x.flip(2), x)
        if self.rot90:
            k = torch.randint(0, 4, (n,), generator=gen)
            x = x.clone()
            for turns in (1, 2, 3):
                idx = (k == turns).nonzero().flatten().to(x.device)
                if len(idx):
                    x[idx] = torch.rot90(x[idx], turns, dims=(2, 3))
        if self.rotate or self.zoom > 1 or self.translate or self.crop_scale < 1:
            x = self._warp(x, gen)
        if self.brightness:
            x = x + uniform(-self.brightness, self.brightness)[:, None, None, None]
        if self.contrast:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * uniform(1 - self.contrast, 1 + self.contrast)[:, None, None, None] + mean
        if self.blur:
            x = torch.where(coin(self.blur)[:, None, None, None], _blur(x, uniform(*self.blur_sigma)), x)
        if self.noise:
            x = x + self.noise * torch.randn(x.shape, generator=gen).to(x.device)
        return x.clamp_(0, 1) if (self.brightness or self.contrast or self.noise) else x

    def _warp(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        r = lambda lo, hi: torch.rand(n, generator=gen, dtype=torch.float64) * (hi - lo) + lo
        angle = r(-self.rotate, self.rotate) * math.pi / 180
        zoom = r(1, self.zoom)
        # Random resized crop: a window of area s (of the image) and aspect a, in output units.
        area = r(self.crop_scale, 1)
        low, high = self.crop_aspect
        aspect = torch.exp(r(math.log(low), math.log(high)))
        sx = (area * aspect).sqrt().clamp(max=1) / zoom
        sy = (area / aspect).sqrt().clamp(max=1) / zoom
        tx = r(-1, 1) * (1 - sx) + r(-self.translate, self.translate) * 2
        ty = r(-1, 1) * (1 - sy) + r(-self.translate, self.translate) * 2
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack([torch.stack([cos * sx, -sin * sy, tx], 1),
                             torch.stack([sin * sx, cos * sy, ty], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype).to(x.device), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur, one sigma per image (radius 3 px)."""
    offsets = torch.arange(-3, 4, device=x.device, dtype=x.dtype)
    k = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    k = k / k.sum(1, keepdim=True)  # (N, 7)
    n, c, h, w = x.shape
    y = x.reshape(1, n * c, h, w)
    kk = k.repeat_interleave(c, 0)
    y = F.conv2d(F.pad(y, (3, 3, 0, 0), mode="reflect"), kk[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, 3, 3), mode="reflect"), kk[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def mix(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, *, kind: str, alpha: float,
        classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch blended with a shuffled copy of itself, and its targets in proportion
    (float ``(N, classes)``; ``y`` is class indices or soft targets already). ``kind``: ``mixup``
    (Zhang et al. 2018: ``lam * x + (1 - lam) * x[perm]``) or ``cutmix`` (Yun et al. 2019: a box
    of ``x[perm]`` pasted into ``x``, ``lam`` then the share of each image left its own). One
    ``lam ~ Beta(alpha, alpha)`` per batch, the permutation and the box drawn from ``gen``."""
    targets = y.float() if y.dim() == 2 else F.one_hot(y.long(), classes).float()
    n, (h, w) = len(targets), x.shape[-2:]
    perm = torch.randperm(n, generator=gen).to(x.device)
    u = torch.rand(2, generator=gen)  # where the box goes (cutmix)
    # torch's Beta sampler takes no generator: numpy's, seeded from gen, keeps the draw reproducible
    lam = float(np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=gen))).beta(alpha, alpha))
    if kind == "mixup":
        x = lam * x + (1 - lam) * x[perm]
    else:
        cut_h, cut_w = round(h * math.sqrt(1 - lam)), round(w * math.sqrt(1 - lam))  # inside the image
        top, left = int(u[0] * (h - cut_h + 1)), int(u[1] * (w - cut_w + 1))
        x = x.clone()
        x[..., top:top + cut_h, left:left + cut_w] = x[perm][..., top:top + cut_h, left:left + cut_w]
        lam = 1 - cut_h * cut_w / (h * w)
    return x, lam * targets + (1 - lam) * targets[perm.to(targets.device)]
