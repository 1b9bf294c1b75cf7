"""Inside the chosen model: its first filters, how far fine-tuning moved each layer, what its
layers see, and where it looks (Grad-CAM).

Contract: :func:`run` takes the model evaluate scored (select's bundle, :mod:`recipe.decide.ensemble`),
its metadata and evaluate's ``predictions.csv``, and writes five pictures into ``out``:

- ``first_conv.png``: the first convolution's filters before and after training, side by side,
  each filter's RGB weights a small tile. Each filter is normalised by its own largest |weight|
  over both panels (so a filter's tiles compare, filters do not); a third panel is the
  difference after - before on one scale for all filters.
- ``weight_change.png``: ||W_after - W_before|| / ||W_before|| (Frobenius) for every layer with a
  weight of two or more dimensions (convolutions, linear layers) in forward order (found by hooks
  on one forward pass), coloured by the model's layer group (``Classifier.group_names``): how deep
  fine-tuning reached (``finetune.unfreeze_to``, the discriminative rates of ``lr_mult``). The head
  is left out: it is new, so it has no "before".
- ``activations.png``: for ``activation_images`` test images, the feature maps of the first,
  middle and last block of the body (:func:`body_blocks`), the ``activation_channels`` channels
  with the highest mean activation on that image, each map on its own scale (forward hooks).
- ``gradcam_top_losses.png`` / ``gradcam_correct.png``: Grad-CAM (Selvaraju et al. 2017) through
  captum's ``LayerGradCam`` on the body's output, the last convolution's feature map after its
  BatchNorm and activation (ResNet: ``layer4``; Lite0: the 1x1 head convolution), upsampled
  bilinearly to the image and laid over it. Over the chosen model's top losses on the test split
  (target: the class it predicted as chosen, views and threshold included), and over the
  ``gradcam_per_class`` most confident correct predictions of each class (target: the true class).
  Several labels per image: over each label's most confident mistakes (target: that label, present
  or absent) and each label's most confident right "present" answers (target: that label), so
  every label the model predicts has its own map.

"Before" is a fresh model from the member's ``model_config`` with its pretrained weights
(``weights: bundled``, ``DEFAULT`` or a file), the weights training started from. With
``weights: null`` it is the random init torch draws right after ``torch.manual_seed(seed)``: the
init train_head started from when nothing drew random numbers between its seed and its model.

One network is inspected, not the ensemble: the bundle's member trained last (the latest stage
of ``recipe.core.layout.TRAINING_STAGES``, then the latest epoch; on ELPV the chosen ``resize`` at
224 px), without TTA views, in eval mode, on the CPU. Its images are what the ensemble feeds it:
the test images decoded at the bundle's size, resized to the member's (``ensemble.fit_size``);
the member normalises them itself (its mean/std buffers). A few images only: every count is in
``InsideConfig``. :func:`run` returns the numbers for ``metrics.json`` (the per-group mean
relative change among them); nothing here talks to MLflow.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import astuple
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from pydantic import TypeAdapter
from torch import nn

from recipe.core.layout import INSIDE, RAW, TRAINING_STAGES
from recipe.core.metrics import label_mistakes, top_losses
from recipe.data.loader import decode_all
from recipe.decide.ensemble import Ensemble, fit_size
from recipe.decide.labels import hot, joined
from recipe.decide.schema import InsideConfig
from recipe.report import plots  # (it puts matplotlib on the Agg backend before any figure is drawn)
from recipe.train.models import Classifier
from recipe.train.schema import ModelConfig
from recipe.train.session import new_model

PICTURES = tuple(astuple(INSIDE))  # the file names, in the report's order


# --- which network, and where it started ------------------------------------------------------

def member_meta(meta: dict, i: int) -> dict:
    """Member ``i``'s checkpoint metadata (a stage checkpoint loaded as a bundle keeps it at the top)."""
    m = meta["members"][i]
    return m if isinstance(m, dict) else meta


def last_trained(meta: dict) -> int:
    """The index of the member trained last: the latest stage, then the latest epoch."""
    def key(i: int) -> tuple[int, int]:
        m = member_meta(meta, i)
        stage = str(m.get("stage", "")).split("@")[0]
        return (TRAINING_STAGES.index(stage) if stage in TRAINING_STAGES else -1, int(m.get("epoch", -1)))
    return max(range(len(meta["members"])), key=key)


def initial_model(model_config: dict, classes: list[str], seed: int) -> Classifier:
    """The model training started from (recipe.train.session.new_model on the member's config): its
    pretrained weights (or, with ``weights: null``, the seed's random init); eval mode, CPU."""
    with torch.random.fork_rng():  # manual_seed reseeds CUDA too: both restored after
        torch.manual_seed(seed)
        model = new_model(TypeAdapter(ModelConfig).validate_python(model_config), classes, None)
    return model.eval()


# --- weights ------------------------------------------------------------------------------------

def weighted_layers(model: Classifier) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module holding a weight of 2+ dimensions, in forward order (the
    order of their first call on one small forward pass; modules never called come last)."""
    layers = {name: m for name, m in model.named_modules()
              if isinstance(getattr(m, "weight", None), nn.Parameter) and m.weight.dim() > 1}
    order: list[str] = []
    by_module = {id(m): name for name, m in layers.items()}
    hooks = [m.register_forward_hook(lambda mod, _i, _o: order.append(by_module[id(mod)])) for m in layers.values()]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, 32, 32, dtype=model.mean.dtype, device=model.mean.device))
    finally:
        for h in hooks:
            h.remove()
    seen = list(dict.fromkeys(order))
    return [(n, layers[n]) for n in seen + [n for n in layers if n not in seen]]


def group_of(model: Classifier) -> dict[int, str]:
    """id(module) -> the name of the layer group it belongs to."""
    out = {}
    for name, group in zip(model.group_names, model.groups):
        for module in group:
            for m in module.modules():
                out[id(m)] = name
    return out


def weight_change(before: Classifier, after: Classifier) -> list[dict]:
    """One row per weighted layer of the body, in forward order: ``{"layer", "group", "change"}``,
    change = ||W_after - W_before|| / ||W_before|| (Frobenius; inf where W_before is 0). The head
    is left out: a new layer has no "before"."""
    groups = group_of(after)
    head = {id(m) for m in after.head.modules()}
    old = dict(before.named_modules())
    rows = []
    for name, m in weighted_layers(after):
        if id(m) in head:
            continue
        w0, w1 = old[name].weight.detach().double().cpu(), m.weight.detach().double().cpu()
        if w0.shape != w1.shape:
            raise ValueError(f"{name}: weight shape {tuple(w1.shape)} differs from the initial model's {tuple(w0.shape)}")
        norm = float(w0.norm())
        diff = float((w1 - w0).norm())
        rows.append({"layer": name, "group": groups.get(id(m), "other"),
                     "change": diff / norm if norm > 0 else (0.0 if diff == 0 else math.inf)})
    return rows


def group_means(rows: list[dict]) -> dict[str, float]:
    """The mean relative change of each layer group (in order of appearance; infinite ones,
    layers that started at 0, left out)."""
    out: dict[str, list[float]] = {}
    for r in rows:
        out.setdefault(r["group"], []).append(r["change"])
    return {g: float(np.mean([x for x in v if math.isfinite(x)] or [0.0])) for g, v in out.items()}


def first_conv(model: Classifier) -> tuple[str, nn.Conv2d]:
    """The first convolution in forward order."""
    for name, m in weighted_layers(model):
        if isinstance(m, nn.Conv2d):
            return name, m
    raise ValueError("the model has no convolution")


# --- activations and Grad-CAM --------------------------------------------------------------------

def body_blocks(model: Classifier) -> list[nn.Module]:
    """The body's blocks in forward order: below the body's single-child wrappers, its children
    that have children of their own (ResNet: layer1..4; torchvision ``features``: the stem and its
    stages), a ModuleList's items one by one (Lite0: its 16 MBConv blocks)."""
    m = model.body
    while len(children := list(m.children())) == 1:
        m = children[0]
    out = []
    for c in m.children():
        if isinstance(c, nn.ModuleList):
            out.extend(c)
        elif any(True for _ in c.children()):
            out.append(c)
    return out or [model.body]


def picked_blocks(model: Classifier) -> list[tuple[str, nn.Module]]:
    """The first, middle and last block (fewer when the body has fewer), labelled by position."""
    blocks = body_blocks(model)
    idx = list(dict.fromkeys([0, len(blocks) // 2, len(blocks) - 1]))
    return [(f"block {i + 1}/{len(blocks)}", blocks[i]) for i in idx]


@torch.no_grad()
def activations(model: Classifier, x: torch.Tensor, layers: list[nn.Module]) -> list[torch.Tensor]:
    """Each layer's output for the batch ``x`` (float images in [0, 1]), through forward hooks."""
    out: list[torch.Tensor | None] = [None] * len(layers)

    def hook(i):
        def save(_m, _inp, o):
            out[i] = (o[0] if isinstance(o, (tuple, list)) else o).detach().float().cpu()
        return save
    hooks = [m.register_forward_hook(hook(i)) for i, m in enumerate(layers)]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return out


def gradcam(model: Classifier, x: torch.Tensor, targets: list[int], layer: nn.Module | None = None) -> np.ndarray:
    """Grad-CAM maps ``(N, H, W)`` (float, >= 0) of ``targets`` for the images ``x`` ``(N, C, H,
    W)`` in [0, 1]: captum's ``LayerGradCam`` on ``layer`` (default: the body's output), ReLU'd,
    upsampled bilinearly to the image size."""
    from captum.attr import LayerAttribution, LayerGradCam

    if len(x) == 0:
        return np.zeros((0, *x.shape[-2:]), dtype=np.float32)
    with torch.enable_grad():
        cam = LayerGradCam(model, layer if layer is not None else model.body)
        attr = cam.attribute(x.float(), target=[int(t) for t in targets], relu_attributions=True)
    up = LayerAttribution.interpolate(attr.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return up[:, 0].clamp_min(0).cpu().numpy()


# --- pictures -------------------------------------------------------------------------------------

def _mosaic(tiles: np.ndarray, ncols: int, gap: int = 1) -> np.ndarray:
    """``(n, k, k, 3)`` tiles in [0, 1] as one image, ``ncols`` to a row, white gaps."""
    n, k = len(tiles), tiles.shape[1]
    nrows = -(-n // ncols)
    img = np.ones((nrows * (k + gap) - gap, ncols * (k + gap) - gap, 3))
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncols)
        img[r * (k + gap):r * (k + gap) + k, c * (k + gap):c * (k + gap) + k] = t
    return img


def _rgb(w: np.ndarray) -> np.ndarray:
    """``(out, in, k, k)`` -> ``(out, k, k, 3)``; a 1-channel filter is grey, more than 3 keep 3."""
    w = w.transpose(0, 2, 3, 1)
    return np.repeat(w, 3, axis=3) if w.shape[3] == 1 else w[..., :3]


def first_conv_picture(before: np.ndarray, after: np.ndarray, name: str, path: Path) -> Path:
    """Before and after, each filter scaled by its own largest |weight| over both (grey = 0), and
    the difference on one scale for all filters."""
    scale = np.maximum(np.abs(before).max(axis=(1, 2, 3)), np.abs(after).max(axis=(1, 2, 3)))
    scale = np.where(scale > 0, scale, 1)[:, None, None, None]
    diff = after - before
    dmax = float(np.abs(diff).max())
    ncols = math.ceil(math.sqrt(len(before)))
    rel = float(np.linalg.norm(diff) / max(np.linalg.norm(before), 1e-30))
    panels = [("before (initial)", _mosaic(_rgb(0.5 + before / (2 * scale)), ncols)),
              ("after fine-tuning", _mosaic(_rgb(0.5 + after / (2 * scale)), ncols)),
              ("after − before" + (f", ±{dmax:.2g} full scale" if dmax > 0 else ": unchanged"),
               _mosaic(_rgb(0.5 + diff / (2 * dmax if dmax > 0 else 1)), ncols))]
    fig, axes = plt.subplots(1, 3, figsize=(11, 4.2))
    for ax, (title, img) in zip(axes, panels):
        ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"First convolution ({name}, {before.shape[0]} filters {before.shape[2]}×{before.shape[3]}, RGB): "
                 f"each filter normalised by its own max |w| over before and after (grey = 0); "
                 f"relative change {rel:.2g}", fontsize=9)
    return plots._save(fig, path)


def weight_change_picture(rows: list[dict], path: Path, title: str) -> Path:
    """Horizontal bars, one per layer, input side at the top, coloured by layer group."""
    names = [r["layer"] for r in rows]
    prefix = _common_prefix(names)
    groups = list(dict.fromkeys(r["group"] for r in rows))
    colors = {g: plt.get_cmap("tab10")(i) for i, g in enumerate(groups)}
    means = group_means(rows)
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.16 * len(rows) + 1.2)))
    y = np.arange(len(rows))
    values = [r["change"] if math.isfinite(r["change"]) else 0.0 for r in rows]
    ax.barh(y, values, color=[colors[r["group"]] for r in rows], height=0.8)
    for k, v in enumerate(values):  # an unchanged layer has no bar: say so
        if v == 0:
            ax.text(0, k, " 0 (unchanged)", va="center", fontsize=5, color="0.4")
    ax.set_yticks(y, [n[len(prefix):] or n for n in names], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("relative weight change ||W_after − W_before|| / ||W_before||")
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colors[g]) for g in groups],
              labels=[f"{g} (mean {means[g]:.3g})" for g in groups], fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=9)
    return plots._save(fig, path)


def _common_prefix(names: list[str]) -> str:
    """The longest dotted prefix every name shares (``body.net.``), to keep the labels short."""
    if not names:
        return ""
    parts = [n.split(".") for n in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    common = common[:min(len(p) for p in parts) - 1]
    return ".".join(common) + "." if common else ""


def _show(ax, img: np.ndarray) -> None:
    """An image ``(C, H, W)`` in [0, 1], grey when it has one channel."""
    img = np.clip(img.transpose(1, 2, 0), 0, 1)
    ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=1)


def activations_picture(images: np.ndarray, maps: list[np.ndarray], labels: list[str], captions: list[str],
                        channels: int, path: Path) -> Path:
    """Per image a block of rows, one per layer: the image (first row), the layer's name and
    shape, then its ``channels`` most active channels on the image (each map min-max scaled on
    its own)."""
    n, layers = len(images), len(maps)
    rows = max(n * layers, 1)
    fig, axes = plt.subplots(rows, channels + 2, figsize=(1.1 * (channels + 1) + 0.9, 1.15 * rows + 0.6), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 0.8] + [1] * channels})
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        _show(axes[i * layers][0], images[i])
        axes[i * layers][0].set_title(captions[i], fontsize=7)
        for j, (label, a) in enumerate(zip(labels, maps)):
            row = axes[i * layers + j]
            fm = a[i]  # (C, h, w)
            row[1].text(0.5, 0.5, f"{label}\n{fm.shape[0]}×{fm.shape[1]}×{fm.shape[2]}", ha="center", va="center",
                        fontsize=7, transform=row[1].transAxes)
            top = np.argsort(-fm.mean(axis=(1, 2)), kind="stable")[:channels]
            for c, ch in enumerate(top):
                m = fm[ch]
                lo, hi = float(m.min()), float(m.max())
                row[c + 2].imshow((m - lo) / (hi - lo) if hi > lo else np.zeros_like(m), cmap="viridis", vmin=0, vmax=1)
                row[c + 2].set_title(f"ch {ch}", fontsize=6)
    fig.suptitle(f"Feature maps of the first, middle and last block of the body (channels × height × width): per "
                 f"image and block the {channels} channels\nwith the highest mean activation on that image, each map "
                 "scaled to its own range (yellow: high)", fontsize=8)
    fig.subplots_adjust(top=1 - 0.6 / fig.get_figheight())  # the title just above the first row, whatever the rows
    return plots._save(fig, path)


def gradcam_picture(tiles: list[tuple[np.ndarray, np.ndarray, str] | None], path: Path, title: str,
                    ncols: int = 4, row_labels: list[str] | None = None) -> Path:
    """Each tile an (image ``(C, H, W)`` in [0, 1], Grad-CAM map ``(H, W)``, caption): the image,
    and beside it the map over it (jet, alpha 0.45, scaled to that image's own max), so what lies
    under the red can be seen; None leaves the tile blank."""
    n = len(tiles)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols + 0.8, 1.9 * nrows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, tile in zip(axes.flat, tiles):
        if tile is None:
            continue
        img, cam, cap = tile
        h, w = cam.shape
        gap = w // 16
        pic = np.clip(img.transpose(1, 2, 0), 0, 1)
        pic = pic[..., 0] if pic.shape[2] == 1 else pic
        for x0 in (0, w + gap):
            ax.imshow(pic, cmap="gray", vmin=0, vmax=1, extent=(x0, x0 + w, h, 0))
        top = float(cam.max())
        ax.imshow(cam / top if top > 0 else cam, cmap="jet", alpha=0.45, vmin=0, vmax=1, extent=(w + gap, 2 * w + gap, h, 0))
        ax.set_xlim(0, 2 * w + gap)
        ax.set_ylim(h, 0)
        ax.set_title(cap + ("" if top > 0 else " (no positive evidence)"), fontsize=8)
    for r, label in enumerate(row_labels or []):
        axes[r][0].text(-0.04, 0.5, label, transform=axes[r][0].transAxes, ha="right", va="center", fontsize=9)
    if n == 0:
        axes[0][0].text(0.5, 0.5, "none", ha="center", va="center")
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(top=1 - 0.6 / fig.get_figheight())
    return plots._save(fig, path)


# --- the stage's work ------------------------------------------------------------------------------

def read_predictions(path: Path, classes: list[str], multi_label: bool = False) -> dict:
    """evaluate's predictions.csv: paths, true classes, the chosen model's probabilities and classes
    (``multi_label``: the true and decided labels as ``(N, labels)`` 0/1)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))

    def of(column: str) -> np.ndarray:
        if multi_label:
            return hot([r[column] for r in rows], classes)
        return np.array([classes.index(r[column]) for r in rows], dtype=np.int64)

    return {"paths": [r["path"] for r in rows], "labels": of("actual"),
            "probs": np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows], dtype=np.float64).reshape(-1, len(classes)),
            "decided": of("predicted_chosen")}


def confident_correct(pred: dict, per_class: int, n_classes: int) -> list[list[int]]:
    """Per class, the indices of its ``per_class`` most confident correct predictions (as chosen);
    several labels per image: per label, its most confident right "present" answers."""
    out = []
    multi = pred["labels"].ndim == 2
    for c in range(n_classes):
        idx = np.flatnonzero((pred["labels"][:, c] > 0) & (pred["decided"][:, c] > 0) if multi
                             else (pred["labels"] == c) & (pred["decided"] == c))
        out.append(idx[np.argsort(-pred["probs"][idx, c], kind="stable")][:per_class].tolist())
    return out


def _weight_pictures(before: Classifier, net: Classifier, rows: list[dict], name: str, start: str,
                     out: Path) -> tuple[str, nn.Conv2d]:
    """The first convolution's name and module, once its before/after picture and the weight-change picture are written."""
    conv_name, conv = first_conv(net)
    w0 = dict(before.named_modules())[conv_name].weight.detach().float().cpu().numpy()
    first_conv_picture(w0, conv.weight.detach().float().cpu().numpy(), conv_name, out / INSIDE.first_conv)
    weight_change_picture(rows, out / INSIDE.weight_change,
                          f"How far training moved each layer of {name} (from the {start} weights; forward order, "
                          "input side at the top)\nthe head is left out: it is new, so it has no 'before'")
    return conv_name, conv


def _picked_images(pred: dict, cfg: InsideConfig, n_classes: int) -> tuple[list[tuple[int, int]], list[list[int]], list[int], list[int]]:
    """The top losses (image index, the class of the map: the one predicted; several labels per
    image: each label's most confident mistakes, the label), the confident correct ones per class,
    the feature maps' images, and all of them once."""
    if pred["labels"].ndim == 2:
        per_label = max(1, -(-cfg.gradcam_top_losses // n_classes))
        worst = label_mistakes(pred["probs"], pred["labels"], pred["decided"], per_label)[:cfg.gradcam_top_losses]
    else:
        worst = [(k, int(pred["decided"][k])) for k in top_losses(pred["probs"], pred["labels"], cfg.gradcam_top_losses)]
    correct = confident_correct(pred, cfg.gradcam_per_class, n_classes)
    # The feature maps' images: one per class in turn (most confident correct first), then any.
    spread = [c[j] for j in range(max([len(c) for c in correct] + [0])) for c in correct if j < len(c)]
    shown = (spread + [k for k in range(len(pred["paths"])) if k not in spread])[:cfg.activation_images]
    needed = list(dict.fromkeys([k for k, _ in worst] + [k for c in correct for k in c] + shown))
    return worst, correct, shown, needed


def _decoded(model: Ensemble, pred: dict, needed: list[int], raw: Path, size: int) -> torch.Tensor:
    """The ``needed`` test images as the member gets them: decoded at the bundle's size, then fit to ``size``."""
    files = [Path(raw) / RAW.files / pred["paths"][k] for k in needed]
    decoded = decode_all(files, size=model.size) if files else torch.zeros(0, model.channels, model.size, model.size,
                                                                           dtype=torch.uint8)
    return fit_size(decoded.float() / 255, size)


def _gradcam_correct(net: Classifier, x: torch.Tensor, correct: list[list[int]], flat: list[int], pred: dict,
                     classes: list[str], name: str, size: int, out: Path) -> None:
    """Nothing: writes the Grad-CAM picture over each class's most confident correct predictions
    (``flat``: ``correct`` in order, ``x`` their images; an image may be there under several labels)."""
    cams_ok = gradcam(net, x, [c for c, ks in enumerate(correct) for _ in ks])
    ncols = max([len(c) for c in correct] + [1])
    tiles: list[tuple | None] = []  # one row per class; None: a blank tile where a class has fewer
    at = 0  # the position in flat
    for c, ks in enumerate(correct):
        for j in range(ncols):
            k = ks[j] if j < len(ks) else None
            tiles.append(None if k is None else (x[at + j].numpy(), cams_ok[at + j],
                                                 f"{classes[c]}, p={pred['probs'][k, c]:.2f}"))
        at += len(ks)
    gradcam_picture(tiles if flat else [], out / INSIDE.gradcam_correct,
                    f"Grad-CAM of {name} ({size} px) over the most confident correct predictions of each class "
                    "(as chosen); the map is for the true class", ncols=ncols, row_labels=classes if flat else None)


def run(cfg: InsideConfig, *, model: Ensemble, meta: dict, predictions: Path, raw: Path, out: Path,
        seed: int) -> dict:
    """Write :data:`PICTURES` into ``out``; return the numbers (``metrics.json``'s ``inside``)."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    i = last_trained(meta)
    net, size, mm = model.members[i].cpu().eval(), model.sizes[i], member_meta(meta, i)
    name = model.names[i]
    classes = model.classes
    if not any(isinstance(m, nn.Conv2d) for m in net.modules()):  # the pixels baseline: no layers to look into
        why = f"{name} is logistic regression on the pixels: no convolution, no feature map to look inside"
        for picture in PICTURES:
            plots.tensor_grid(np.zeros((0, 1, 8, 8)), [], out / picture, why)
        return {"member": name, "size": size, "skipped": why, "time_s": round(time.perf_counter() - t0, 1)}

    before = initial_model(mm["model_config"], classes, seed)
    rows = weight_change(before, net)
    start = "pretrained" if mm["model_config"]["weights"] is not None else f"random init, seed {seed}"
    conv_name, _ = _weight_pictures(before, net, rows, name, start, out)

    multi = model.multi_label
    pred = read_predictions(predictions, classes, multi)
    worst, correct, shown, needed = _picked_images(pred, cfg, len(classes))
    x_all = _decoded(model, pred, needed, raw, size)
    at = {k: j for j, k in enumerate(needed)}

    def batch(ks: list[int]) -> torch.Tensor:
        return x_all[[at[k] for k in ks]] if ks else x_all[:0]

    with torch.no_grad():
        logits = net(x_all) if len(x_all) else torch.zeros(0, len(classes))
        p_net = (logits.sigmoid() if multi else logits.softmax(1)).double().numpy()

    picked = picked_blocks(net)
    x = batch(shown)
    maps = [a.numpy() for a in activations(net, x, [m for _, m in picked])] if len(x) else []
    activations_picture(x.numpy(), maps, [label for label, _ in picked],
                        joined(pred["labels"][shown], classes) if multi else [classes[pred["labels"][k]] for k in shown],
                        cfg.activation_channels,
                        out / INSIDE.activations)

    x = batch([k for k, _ in worst])
    cams = gradcam(net, x, [c for _, c in worst])
    if multi:
        caps = [f"{classes[c]} {'present' if pred['labels'][k, c] else 'absent'} p={pred['probs'][k, c]:.2f}, "
                f"net {p_net[at[k], c]:.2f}" for k, c in worst]
        what = ("each label's most confident mistakes as chosen: the label, present or absent, its p as chosen "
                "(net: this network alone, no views); the map is for that label")
    else:
        caps = [f"{classes[pred['labels'][k]]} → {classes[c]}, p={pred['probs'][k, c]:.2f} (net {p_net[at[k], c]:.2f})"
                for k, c in worst]
        what = ("the top losses as chosen: actual → predicted, p of the prediction as chosen (net: this network "
                "alone, no views); the map is for the predicted class")
    gradcam_picture(list(zip(x.numpy(), cams, caps)), out / INSIDE.gradcam_top_losses,
                    f"Grad-CAM of {name} ({size} px) over {what}")

    flat = [k for c in correct for k in c]
    _gradcam_correct(net, batch(flat), correct, flat, pred, classes, name, size, out)
    first = next((r["change"] for r in rows if r["layer"] == conv_name), None)
    return {"member": name, "size": size, "start": start, "layers": len(rows),
            "weight_change": group_means(rows), "first_conv_change": first,
            "max_weight_change": max((r["change"] for r in rows if math.isfinite(r["change"])), default=None),
            "images": len(needed), "time_s": round(time.perf_counter() - t0, 1)}
