"""The exported model under ONNX Runtime, with no PyTorch: what ``predict --model model.onnx`` runs.

Contract: :class:`OnnxModel` opens a file written by :func:`recipe.ship.export.export_onnx` and
exposes what :func:`recipe.ship.predict.main` needs of any model (``classes``, ``size``,
``channels``, ``threshold``, ``names``, ``multi_label``), and :meth:`OnnxModel.run`: float32 images
``(N, C, size, size)`` in [0, 1] to the graph's probabilities and decisions (several labels per
image: ``(N, labels)`` 0/1, each label's threshold applied inside the graph). This module imports numpy and
onnxruntime only (and the project's errors), so the ONNX path of ``predict`` needs onnxruntime,
numpy and Pillow, not torch.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from recipe.core.errors import ConfigError, DataError

FORMAT = "finetune-recipe-onnx-1"


class OnnxModel:
    def __init__(self, path: str | Path, *, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError("an ONNX model needs onnxruntime: pip install onnxruntime") from None
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: model file not found (run the export stage: dvc repro export)")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT's errors are long; the first line says what is wrong
            raise DataError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from None
        raw = self.session.get_modelmeta().custom_metadata_map
        if raw.get("format") != json.dumps(FORMAT):
            raise DataError(f"{path}: not an ONNX model exported by finetune-recipe (no {FORMAT!r} metadata)")
        self.meta = {k: json.loads(v) for k, v in raw.items()}
        self.classes = list(self.meta["classes"])
        self.size, self.channels = int(self.meta["size"]), int(self.meta["channels"])
        self.threshold = self.meta["threshold"]
        self.names = [m["name"] for m in self.meta["members"]]
        self.multi_label = bool(self.meta.get("multi_label"))
        first = self.session.get_inputs()[0]
        self.input = first.name
        self.batch = first.shape[0] if isinstance(first.shape[0], int) else None  # None: any batch size

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (float32, ``(N, classes)``) and decided class indices (int64, ``(N,)``; several
        labels per image: ``(N, labels)`` 0/1)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != (self.channels, self.size, self.size):
            raise ValueError(f"expected float32 images of shape (N, {self.channels}, {self.size}, {self.size}), "
                             f"got {x.shape}")
        if not self.batch:  # any batch size
            probs, predicted = self.session.run(["probabilities", "predicted"], {self.input: x})
            return probs, predicted
        # A graph for a fixed batch (export.dynamic_batch: false exports one for a single image).
        parts = [self.session.run(["probabilities", "predicted"], {self.input: x[i:i + self.batch]})
                 for i in range(0, len(x), self.batch)]
        return np.concatenate([p for p, _ in parts]), np.concatenate([d for _, d in parts])
