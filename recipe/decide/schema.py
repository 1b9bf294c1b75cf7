"""Typed schemas for the params sections the stages read.

No field has a default here: defaults live once, in ``conf/``. Models forbid unknown keys and
are frozen, so a typo in a config is an error and a stage cannot mutate its own settings.

The schemas of the sections the decide package's stages read. This module imports only the schema
modules of the packages below decide (tests/test_layers.py), so a change here reruns the stages
that load ``recipe.decide``, not every stage.

Names that a registry owns (TTA view sets, optimizers, schedules) are checked against that
registry by the code that builds from it, and a test keeps the two in step.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, NonNegativeInt, PositiveInt

from recipe.core.schema import Fraction, Strict


class TtaConfig(Strict):
    scales: list[Annotated[float, Field(gt=0)]]
    crop: Annotated[float, Field(gt=0, lt=1)]
    n: PositiveInt
    beta: Fraction | None


class EvalMetricsConfig(Strict):
    ece_bins: PositiveInt
    top_k: list[PositiveInt]
    bootstrap: NonNegativeInt  # resamples for the accuracy interval (0: none)
    confidence: Annotated[float, Field(gt=0, lt=1)]  # the interval's level
    most_confused: NonNegativeInt  # class pairs listed


class LogModelConfig(Strict):
    log: bool
    register_as: str | None
    max_pixels: PositiveInt  # the served model refuses a larger image before decoding it
    max_rows: PositiveInt  # images in one request at most


class SelectConfig(Strict):
    criterion: Literal["log_loss", "balanced_log_loss", "accuracy", "balanced_accuracy", "macro_f1", "macro_ap"]  # on the valid split
    tolerance: Annotated[float, Field(ge=0)]  # within this of the best counts as a tie; ties go to the cheaper
    candidate: str  # auto | a candidate's name (pins the choice)
    views: str  # auto | a view set's name (pins the TTA choice)
    view_sets: list[str]  # keys of recipe.decide.tta.VIEW_SETS tried on valid (checked there)
    views_for: PositiveInt | None  # the best this many candidates (plainly) get every view set; None: all
    trained_views_only: bool  # leave out view sets with a flip or turn the training augmentation never showed
    tta: TtaConfig  # the settings of the view sets that use them
    ensembles: list[list[str]]  # each a list of members: a stage's name, or <stage>@snapshots for all its snapshots
    threshold: Literal["off", "accuracy", "balanced_accuracy"] | Annotated[float, Field(gt=0, lt=1)]
    logit_adjust: Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=1)]  # taus tried on valid; [0]: none
    label_threshold: Literal["auto", "per_label", "shared"] | Annotated[float, Field(gt=0, lt=1)]  # several labels per image


class ScoringConfig(Strict):
    """How select and evaluate run the networks they score (recipe/decide/engine.py)."""
    engine: Literal["auto", "torch", "onnxruntime"]
    onnx_min_images: NonNegativeInt  # auto: ONNX Runtime for a pass of at least this many images (x views) at 224 px


class EvaluateConfig(Strict):
    metrics: EvalMetricsConfig
    stage_table: bool
    top_losses: NonNegativeInt
    model: LogModelConfig


class InsideConfig(Strict):
    """What recipe/decide/inside.py draws of the chosen model (counts of test images and channels)."""
    activation_images: NonNegativeInt  # test images whose feature maps are drawn
    activation_channels: PositiveInt  # feature maps per layer and image (the most active channels)
    gradcam_top_losses: NonNegativeInt  # Grad-CAM tiles over the top losses
    gradcam_per_class: NonNegativeInt  # Grad-CAM tiles per class over its most confident correct predictions

