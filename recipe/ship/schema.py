"""Typed schemas for the params sections the stages read.

No field has a default here: defaults live once, in ``conf/``. Models forbid unknown keys and
are frozen, so a typo in a config is an error and a stage cannot mutate its own settings.

The schemas of the sections the ship package's stages read. This module imports only the schema
modules of the packages below ship (tests/test_layers.py), so a change here reruns the stages
that load ``recipe.ship``, not every stage.

Names that a registry owns (TTA view sets, optimizers, schedules) are checked against that
registry by the code that builds from it, and a test keeps the two in step.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import Field

from recipe.core.schema import Strict


class ExportConfig(Strict):
    fold_bn: bool  # fold each Conv2d + BatchNorm2d pair into one convolution before exporting
    opset: Annotated[int, Field(ge=18)]  # ONNX opset of the graph (18: the first with antialiased Resize)
    dynamic_batch: bool  # any batch size; false: a graph for one image at a time
    optimize: bool  # the exporter's own graph optimisation (onnxscript: constant folding, dead code)
    tolerance: Annotated[float, Field(gt=0)]  # largest |p_exported - p_checkpoint| on the test split
    parity_images: Annotated[int, Field(ge=1)] | None  # the sample compared in full; None: every test image

