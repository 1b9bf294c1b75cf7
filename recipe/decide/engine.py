"""What runs a network select or evaluate scores: PyTorch, or ONNX Runtime on the CPU.

Contract: :func:`runner` returns the network itself, or an :class:`OnnxNetwork` that computes the
same logits under ONNX Runtime (``scoring.engine``: ``torch``, ``onnxruntime``, or ``auto``: ONNX
Runtime on the CPU for a pass of at least ``scoring.onnx_min_images`` images, PyTorch otherwise
and on CUDA). On the 2 CPU cores ONNX Runtime runs the folded Lite0 graph at 224 px three times
as fast as PyTorch does (``python bench/export.py``), but exporting a network costs a few
seconds: it pays for a long pass (evaluate's views over the test split), not for a short one.

An :class:`OnnxNetwork` exports its network (``torch.onnx.export``, the exporter the export stage
uses, any batch size) the first time it sees an input shape, and checks ONNX Runtime's logits
against PyTorch's on the first images of that batch: a network the exporter or ONNX Runtime
cannot run, or runs to other logits (beyond ``tolerance``), is scored by PyTorch instead, with a
printed line saying why. Which engine runs a pass depends on the config and the data only, so a
run's numbers do not depend on the machine's timing.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from torch import nn

from recipe.decide.schema import ScoringConfig

# The side whose pixels one "image" of scoring.onnx_min_images counts: a 128 px network's image is
# (128 / 224)^2 of one.
REFERENCE_SIDE = 224
TOLERANCE = 1e-4  # ONNX Runtime's logits against PyTorch's, relative to the largest (fold.py's probe check too)


class OnnxNetwork(nn.Module):
    """``model``'s logits under ONNX Runtime (CPU), a session per input shape; see the module docstring."""

    def __init__(self, model: nn.Module, *, name: str = ""):
        super().__init__()
        self.model = model.eval()
        self.name = name
        self.sessions: dict[tuple[int, ...], object] = {}
        self.fallback: str | None = None  # why PyTorch scores this network after all

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fallback is None:
            key = tuple(x.shape[1:])
            session = self.sessions.get(key) or self._open(x, key)
            if session is not None:
                out = session.run(None, {"images": x.detach().float().cpu().contiguous().numpy()})[0]
                return torch.from_numpy(out).to(x.device)
        return self.model(x)

    def _open(self, x: torch.Tensor, key: tuple[int, ...]):
        """A session for inputs shaped like ``x``, checked on its first images; None (and
        :attr:`fallback` set) when ONNX Runtime cannot score the network as PyTorch does."""
        probe = x[:2].detach().float().cpu().contiguous()
        if len(probe) == 1:  # torch.export would take a batch of one for a constant
            probe = probe.expand(2, *probe.shape[1:]).contiguous()
        try:
            session = _session(self.model, probe)
            with torch.no_grad():
                ref = self.model(probe.to(x.device)).float().cpu().numpy()
            got = session.run(None, {"images": probe.numpy()})[0]
            diff = float(np.abs(got - ref).max())
            if not diff <= TOLERANCE * (1 + float(np.abs(ref).max())):  # NaN fails too
                raise ValueError(f"its logits differ from PyTorch's by {diff:.3g}")
        except Exception as exc:  # the exporter's and ONNX Runtime's errors are long: the first line
            self.fallback = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
            print(f"scoring: ONNX Runtime does not score {self.name or 'a network'} ({self.fallback}); PyTorch does")
            return None
        self.sessions[key] = session
        return session


def _session(model: nn.Module, probe: torch.Tensor):
    """An ONNX Runtime session (CPU) of ``model`` for inputs shaped like ``probe``, any batch size."""
    import onnxruntime as ort

    wrapped = nn.Sequential(model).eval()  # its buffers get a prefix: a name of the model's own cannot clash
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():  # the exporter reports its steps
        program = torch.onnx.export(wrapped, (probe,), dynamo=True, opset_version=18, input_names=["images"],
                                    output_names=["logits"],
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                                    external_data=False, optimize=True, verbose=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the cores PyTorch would have used
    options.inter_op_num_threads = 1
    return ort.InferenceSession(program.model_proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def runner(model: nn.Module, scoring: ScoringConfig, *, device: torch.device, images: int, side: int,
           name: str = "") -> nn.Module:
    """What scores ``model`` in a pass of ``images`` images (times views) at ``side`` px: the model
    itself, or an :class:`OnnxNetwork` of it, as ``scoring`` says (see the module docstring)."""
    if scoring.engine == "torch":
        return model
    if scoring.engine == "auto" and (device.type != "cpu"
                                     or images * (side / REFERENCE_SIDE) ** 2 < scoring.onnx_min_images):
        return model
    return OnnxNetwork(model, name=name)
