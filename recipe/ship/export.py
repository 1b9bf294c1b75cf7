"""Ship the chosen model: BatchNorm folded into the convolutions, one ONNX graph, parity checked.

Contract:

- The model is folded first (:func:`recipe.decide.fold.fold_ensemble`: each Conv2d + BatchNorm2d
  pair one convolution, the graph select and evaluate scored). The whole export is checked
  again on the test split: :func:`parity`.
- :class:`Decision` wraps an :class:`~recipe.decide.ensemble.Ensemble` (members, each at its size,
  its TTA views, the threshold) into what is exported: float32 images ``(N, C, size, size)``
  in [0, 1] in; ``probabilities`` (float32, ``(N, classes)``) and ``predicted`` (int64, the
  class index the model decides on, its threshold applied) out. An ensemble is one graph: a
  consumer needs no manifest and no code of ours to get the decision. Several labels per image:
  ``probabilities`` are each label's sigmoid and ``predicted`` is ``(N, labels)`` 0/1, each label's
  own threshold applied inside the graph (and listed in the metadata).
- :func:`export_onnx` writes that graph (``torch.onnx.export``, the ``torch.export`` based
  exporter, weights inside the one file) with the model's metadata in ``metadata_props``
  (:data:`META_KEYS`, JSON values): classes, input size and channels, normalisation (applied in
  the graph), the threshold, the views and members.
- :func:`parity` compares probabilities and decisions of the checkpoint, the folded model and
  the ONNX model under ONNX Runtime on a set of images.

Nothing here reads the pipeline's files or talks to MLflow (``stages/export.py`` does).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recipe.core.errors import ConfigError, DataError
from recipe.core.layout import EXPORT, RAW
from recipe.decide.ensemble import Ensemble
from recipe.decide.fold import fold_ensemble
from recipe.ship.onnx_model import FORMAT, OnnxModel

# Views that are random draws (a generator per view) give another picture each call: not a graph.
RANDOM_VIEWS = ("augment",)


def batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class Decision(nn.Module):
    """The exported graph: an ensemble's probabilities (float32) and its decision (int64)."""

    def __init__(self, model: Ensemble):
        super().__init__()
        if model.views.name in RANDOM_VIEWS:
            raise ConfigError(f"views {model.views.name!r} are random draws, not a fixed graph: export a model "
                              "chosen with deterministic views (select.views=flips, for example)")
        if model.threshold is not None and len(model.classes) != 2 and not model.multi_label:
            raise ConfigError(f"a decision threshold needs two classes, not {len(model.classes)}")
        self.model = model
        self.threshold = model.threshold
        self.multi_label = model.multi_label
        if self.multi_label:  # each label's threshold (0.5 without one), compared in float64 as decide() does
            cut = torch.as_tensor(0.5 if model.threshold is None else model.threshold, dtype=torch.float64)
            self.register_buffer("cut", cut.expand(len(model.classes)).clone())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.model(x)
        if self.multi_label:
            predicted = (p >= self.cut.to(p.dtype)).long()
        elif self.threshold is None:
            predicted = p.argmax(1)
        else:
            predicted = (p[:, 1] >= self.threshold).long()
        return p.float(), predicted


def metadata(model: Ensemble, info: dict | None = None) -> dict[str, str]:
    """The ONNX model's ``metadata_props``: every value JSON."""
    def norm(member) -> dict | None:
        return {"mean": member.mean.flatten().tolist(), "std": member.std.flatten().tolist()} \
            if hasattr(member, "mean") else None

    values = {
        "format": FORMAT, "classes": model.classes, "size": model.size, "channels": model.channels,
        "input": (f"float32 (N, {model.channels}, {model.size}, {model.size}) in [0, 1]: the image decoded to "
                  f"{'grayscale' if model.channels == 1 else 'RGB'}, its shorter side resized to {model.size} px "
                  "(bilinear), centre-cropped; normalisation is inside the graph"),
        "threshold": model.threshold, "views": model.views.name,
        # tau * log(train prior) per class, subtracted from the log probabilities inside the graph (select's)
        "logit_adjust": None if model.adjust is None else model.adjust.tolist(),
        "members": [{"name": n, "size": s, "normalisation": norm(m)}  # applied inside the graph, per member
                    for n, s, m in zip(model.names, model.sizes, model.members)],
        "outputs": "probabilities: float32 (N, classes); predicted: int64 class index (threshold applied)",
        **(info or {}),
    }
    if model.multi_label:  # only then: the metadata of one label per image keeps its bytes
        values["multi_label"] = True
        values["outputs"] = ("probabilities: float32 (N, labels), each label's sigmoid; predicted: int64 (N, labels), "
                             "1 where the label's probability reaches its threshold (threshold: one per label)")
    return {k: json.dumps(v) for k, v in values.items()}


def export_onnx(model: Ensemble, path: Path, *, opset: int, dynamic_batch: bool, optimize: bool,
                info: dict | None = None) -> Path:
    """``model`` (folded or not) as one ONNX file at ``path``, with :func:`metadata`."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = Decision(model.eval()).eval()
    x = torch.rand(2 if dynamic_batch else 1, model.channels, model.size, model.size)
    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    program = torch.onnx.export(wrapped, (x,), dynamo=True, opset_version=opset, input_names=["images"],
                                output_names=["probabilities", "predicted"], dynamic_shapes=shapes,
                                external_data=False, optimize=optimize, verbose=False)
    proto = program.model_proto
    for key, value in metadata(model, info).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    tmp = path.with_suffix(".tmp")
    onnx.save_model(proto, str(tmp))
    onnx.checker.check_model(str(tmp))
    tmp.replace(path)
    return path


def torch_probs(model: Ensemble, images: torch.Tensor, batch_size: int) -> np.ndarray:
    """The ensemble's probabilities on the CPU, in float32 and channels_last (the layout the
    stages run in), batch by batch."""
    model = model.to(memory_format=torch.channels_last)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].float().contiguous(memory_format=torch.channels_last)
            out.append(model(x).numpy())
    return np.concatenate(out)


def onnx_probs(onnx_path: Path, images: torch.Tensor, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """ONNX Runtime's probabilities and decided classes over ``images``, batch by batch."""
    runtime = OnnxModel(onnx_path)
    runs = [runtime.run(images[i:i + batch_size].numpy()) for i in range(0, len(images), batch_size)]
    ort, ort_pred = (np.concatenate(parts) for parts in zip(*runs))
    return ort, ort_pred


def sample(n: int, k: int | None, seed: int = 0) -> np.ndarray:
    """``k`` of ``n`` indices drawn without replacement with ``seed``, sorted (all of them when
    ``k`` is None or at least ``n``)."""
    if k is None or k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def parity(checkpoint: Ensemble, folded: Ensemble, onnx_path: Path, images: torch.Tensor, *,
           batch_size: int, onnx: tuple[np.ndarray, np.ndarray] | None = None,
           reference: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Probabilities and decisions of the checkpoint, the folded model and ONNX Runtime on
    ``images`` (float, ``(N, C, size, size)`` in [0, 1], at least one): the largest absolute differences from
    the checkpoint, the number of decisions that differ, and the arrays themselves. Each model
    makes its pass alone (ONNX Runtime's threads and torch's would share the cores otherwise).
    ``onnx``: ONNX Runtime's output on these images, when the caller has it already;
    ``reference``: the checkpoint's probabilities and decided classes on them, when the caller has
    them already (evaluate's, from its predictions.csv): the checkpoint then makes no pass here."""
    ref, decided = reference if reference is not None else (None, None)
    if ref is None:
        ref = torch_probs(checkpoint, images, batch_size)
        decided = checkpoint.decide(ref)
    fold = torch_probs(folded, images, batch_size)
    ort, ort_pred = onnx if onnx is not None else onnx_probs(onnx_path, images, batch_size)

    def differing(a: np.ndarray) -> int:  # images decided otherwise (several labels: any label)
        return int(np.any((np.asarray(a) != decided).reshape(len(decided), -1), axis=1).sum())

    return {
        "images": int(len(ref)),
        "folded_max_abs_diff": float(np.abs(fold - ref).max()),
        "onnx_max_abs_diff": float(np.abs(ort - ref).max()),
        "folded_class_mismatches": differing(checkpoint.decide(fold)),
        "onnx_class_mismatches": differing(ort_pred),
        "probabilities": {"checkpoint": ref, "folded": fold, "onnx": ort}, "predicted": decided,
        "onnx_predicted": ort_pred,
    }


def _evaluated(evaluated: dict[str, tuple[str, list[float]]] | None, paths, classes: list[str],
               multi_label: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
    """evaluate's probabilities and decided class index for each of ``paths`` (several labels per
    image: ``(N, labels)`` 0/1, from the labels decided joined by a space); None without evaluate's record."""
    if evaluated is None:
        return None
    missing = [p for p in paths if p not in evaluated]
    if missing:
        raise DataError(f"evaluate's predictions lack {len(missing)} test image(s), e.g. {missing[0]}: rerun evaluate")
    probs = np.array([evaluated[p][1] for p in paths], dtype=np.float64)
    if multi_label:
        from recipe.decide.labels import hot

        return probs, hot([evaluated[p][0] for p in paths], classes)
    return probs, np.array([classes.index(evaluated[p][0]) for p in paths])


class ExportError(ConfigError):
    """The exported model does not match the checkpoint within the tolerance."""


def run(cfg, *, bundle: Path, split: Path, raw: Path, out: Path, workers: int, batch_size: int,
        chosen_accuracy: float | None = None, evaluated: dict[str, tuple[str, list[float]]] | None = None) -> dict:
    """Fold, export and check select's bundle on the test split; ``out/model.onnx`` and the
    metrics (what was folded, the parity figures, the sizes). Raises :class:`ExportError` when
    parity fails. ``chosen_accuracy``: evaluate's test accuracy of the model as chosen, which the
    ONNX model's is set beside; ``evaluated``: evaluate's record of each test image (path ->
    (decided class name, probabilities), its predictions.csv).

    The comparison runs on ``cfg.parity_images`` test images drawn with seed 0 (all when None):
    the folded model and ONNX Runtime against the checkpoint. The checkpoint's probabilities and
    decisions are evaluate's when it has them (computed once, shared), else a PyTorch pass here.
    The ONNX graph's test accuracy is over the same images."""
    from recipe.data.loader import load_split
    from recipe.data.split import class_names, read_split
    from recipe.decide.ensemble import load_bundle

    t0 = time.perf_counter()
    model, meta = load_bundle(bundle)
    table = read_split(split)
    classes = class_names(table)
    test = load_split(table, Path(raw) / RAW.files, split="test", size=model.size, classes=classes,
                      workers=workers)
    images = test.images
    if images.shape[1] == 1 and model.channels == 3:  # gray test images for a model trained on some colour ones
        images = images.expand(-1, 3, -1, -1)
    elif images.shape[1] != model.channels:
        raise DataError(f"{split}: the test split has {images.shape[1]}-channel images, the model takes "
                        f"{model.channels}; the exported graph takes exactly the model's channels")
    folded, pairs = fold_ensemble(model) if cfg.fold_bn else (model, 0)
    info = {"candidate": meta.get("info", {}).get("candidate", "+".join(model.names))}
    path = export_onnx(folded, Path(out) / EXPORT.model, opset=cfg.opset, dynamic_batch=cfg.dynamic_batch,
                       optimize=cfg.optimize, info=info)
    idx = sample(len(images), cfg.parity_images)
    reference = _evaluated(evaluated, [test.paths[i] for i in idx], classes, model.multi_label)
    check = parity(model, folded, path, images[torch.as_tensor(idx)].float() / 255, batch_size=batch_size,
                   reference=reference)
    labels = test.labels.numpy()[idx]
    metrics = {
        "candidate": info["candidate"], "members": model.names, "views": model.views.name,
        "threshold": model.threshold, "size": model.size, "channels": model.channels,
        "fold_bn": cfg.fold_bn, "folded_pairs": pairs, "batchnorm_left": batchnorms(folded),
        "batchnorm_before": batchnorms(model), "opset": cfg.opset, "dynamic_batch": cfg.dynamic_batch,
        "optimize": cfg.optimize,
        "parity": {**{k: v for k, v in check.items() if k not in ("probabilities", "predicted", "onnx_predicted")},
                   "of_test_images": int(len(images)),
                   "reference": "evaluate" if reference is not None else "checkpoint"},
        "tolerance": cfg.tolerance,
        # on the compared images: the checkpoint's decisions (evaluate's when it has them) and the graph's own
        "test_accuracy": {"images": int(len(idx)), "checkpoint": float((check["predicted"] == labels).mean()),
                          "onnx": float((check["onnx_predicted"] == labels).mean()),
                          "evaluate": chosen_accuracy},
        "bytes": {"bundle": Path(bundle).stat().st_size, "onnx": path.stat().st_size},
        "time_s": round(time.perf_counter() - t0, 1),
    }
    p = metrics["parity"]
    # np.max, not max(): a NaN in either is the worst figure (max(x, nan) is x)
    worst = float(np.max([p["folded_max_abs_diff"], p["onnx_max_abs_diff"]]))
    if not worst <= cfg.tolerance or p["folded_class_mismatches"] or p["onnx_class_mismatches"]:  # NaN fails too
        raise ExportError(f"export parity failed on {p['images']} of {len(images)} test images: largest probability "
                          f"difference {worst:.3g} (export.tolerance {cfg.tolerance:g}), decided classes differing "
                          f"from {'evaluate' if reference is not None else 'the checkpoint'}: folded "
                          f"{p['folded_class_mismatches']}, ONNX {p['onnx_class_mismatches']}")
    return metrics
