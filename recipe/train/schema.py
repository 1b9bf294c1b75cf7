"""Typed schemas for the params sections the stages read.

No field has a default here: defaults live once, in ``conf/``. Models forbid unknown keys and
are frozen, so a typo in a config is an error and a stage cannot mutate its own settings.

The schemas of the sections the train package's stages read. This module imports only the schema
modules of the packages below train (tests/test_layers.py), so a change here reruns the stages
that load ``recipe.train``, not every stage.

Names that a registry owns (TTA view sets, optimizers, schedules) are checked against that
registry by the code that builds from it, and a test keeps the two in step.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import AfterValidator, Discriminator, Field, NonNegativeInt, PositiveInt, Tag, field_validator

from recipe.core.schema import Fraction, PositiveFloat, Rate, Strict
from recipe.data.sizes import train_batch


class HeadConfig(Strict):
    pool: Literal["avg", "avgmax"]
    dropout: Annotated[float, Field(ge=0, lt=1)]
    init: Literal["kaiming", "xavier"]
    init_gain: PositiveFloat
    prior_bias: bool


Channels = Annotated[list[float], Field(min_length=3, max_length=3)]  # one value per channel, of inputs in [0, 1]


class NetConfig(Strict):
    """A model the recipe names itself: the Lite models, a torchvision model, ``pixels_<side>``."""
    name: str = Field(min_length=1)
    weights: str | None  # bundled | DEFAULT | a path | null
    mean: Channels
    std: Annotated[list[PositiveFloat], Field(min_length=3, max_length=3)]
    adapt_bn: bool  # re-estimate the pretrained body's BatchNorm statistics on the training images (AdaBN)
    head: HeadConfig


class TimmConfig(Strict):
    """``name: timm``: the timm model ``arch``; mean and std null take the ones of its pretrained config."""
    name: Literal["timm"]
    arch: str = Field(min_length=1)  # a name of timm.list_models() (convnext_nano, resnet50d, ...)
    weights: str | None  # hub (timm's download) | a path | null
    mean: Channels | None
    std: Annotated[list[PositiveFloat], Field(min_length=3, max_length=3)] | None
    adapt_bn: bool
    head: HeadConfig


def _model_kind(v) -> str:
    # A section with an arch is a timm one: {name: resnet18, arch: ...} fails on name ("Input should be 'timm'").
    if isinstance(v, dict):
        return "timm" if v.get("name") == "timm" or "arch" in v else "net"
    return "timm" if isinstance(v, TimmConfig) else "net"


# Two schemas, so that every other model's section (and the model_config its checkpoints carry) stays
# exactly what it was: no arch key, mean and std required.
ModelConfig = Annotated[Union[Annotated[NetConfig, Tag("net")], Annotated[TimmConfig, Tag("timm")]],
                        Discriminator(_model_kind)]


class _Optim(Strict):
    weight_decay: Annotated[float, Field(ge=0)]
    bn_weight_decay: bool
    lr_scaling: Literal["none", "linear", "sqrt"]  # recipe.train.optim.LR_SCALING (tests keep them in step)
    lr_reference_batch: PositiveInt  # the batch size the configured rates are stated for
    l1: Annotated[float, Field(ge=0)]  # lambda of the L1 term (recipe.train.fit), on the weights that get weight decay


class SgdConfig(_Optim):
    name: Literal["sgd"]
    momentum: Annotated[float, Field(ge=0, lt=1)]
    nesterov: bool

    @field_validator("nesterov")
    @classmethod
    def _needs_momentum(cls, v: bool, info) -> bool:
        if v and not info.data.get("momentum"):
            raise ValueError("Nesterov momentum needs momentum > 0")
        return v


class AdamConfig(_Optim):
    name: Literal["adam", "adamw"]
    betas: Annotated[list[Annotated[float, Field(ge=0, lt=1)]], Field(min_length=2, max_length=2)]
    eps: PositiveFloat


class RmspropConfig(_Optim):
    name: Literal["rmsprop"]
    alpha: Annotated[float, Field(gt=0, lt=1)]
    momentum: Annotated[float, Field(ge=0, lt=1)]
    eps: PositiveFloat


class AdagradConfig(_Optim):
    name: Literal["adagrad"]
    eps: PositiveFloat


class AdadeltaConfig(_Optim):
    name: Literal["adadelta"]
    rho: Annotated[float, Field(gt=0, lt=1)]
    eps: PositiveFloat


OptimConfig = Annotated[Union[SgdConfig, AdamConfig, RmspropConfig, AdagradConfig, AdadeltaConfig],
                        Field(discriminator="name")]


class OneCycle(Strict):
    name: Literal["onecycle"]
    pct_start: Annotated[float, Field(gt=0, lt=1)]
    div_factor: PositiveFloat
    final_div_factor: PositiveFloat
    cycle_momentum: bool


class Sgdr(Strict):
    name: Literal["sgdr"]
    cycle_len: PositiveInt  # epochs
    cycle_mult: PositiveInt
    eta_min: Fraction


class Cosine(Strict):
    name: Literal["cosine"]
    eta_min: Fraction


class StepSchedule(Strict):
    name: Literal["step"]
    step_size: PositiveInt
    gamma: Annotated[float, Field(gt=0, le=1)]


class MultiStep(Strict):
    name: Literal["multistep"]
    milestones: list[PositiveInt]
    gamma: Annotated[float, Field(gt=0, le=1)]


class Exponential(Strict):
    name: Literal["exponential"]
    gamma: Annotated[float, Field(gt=0, le=1)]


class Plateau(Strict):
    name: Literal["plateau"]
    factor: Annotated[float, Field(gt=0, lt=1)]
    patience: NonNegativeInt


class Constant(Strict):
    name: Literal["constant"]


ScheduleConfig = Annotated[Union[OneCycle, Sgdr, Cosine, StepSchedule, MultiStep, Exponential, Plateau, Constant],
                           Field(discriminator="name")]


def _ordered(v: tuple[float, float]) -> tuple[float, float]:
    if v[0] > v[1]:
        raise ValueError("must be [low, high] with low <= high")
    return v


Span = Annotated[tuple[PositiveFloat, PositiveFloat], Field(strict=False), AfterValidator(_ordered)]  # [low, high] of a random draw


class AugmentConfig(Strict):
    flip_h: Fraction
    flip_v: Fraction
    rot90: bool
    rotate: Annotated[float, Field(ge=0, le=180)]
    zoom: Annotated[float, Field(ge=1)]
    translate: Annotated[float, Field(ge=0, le=0.5)]
    crop_scale: Annotated[float, Field(gt=0, le=1)]
    crop_aspect: Span  # width/height of every warp's window, log-uniform in [low, high]
    brightness: Fraction
    contrast: Fraction
    blur: Fraction
    blur_sigma: Span  # px
    noise: Annotated[float, Field(ge=0)]


def _not_under_min(v: int, info) -> int:
    """A bound ``max`` that is not under its ``min`` (else the rule would silently return ``max``)."""
    if "min" in info.data and v < info.data["min"]:
        raise ValueError(f"must be at least min ({info.data['min']})")
    return v


class AutoSize(Strict):
    """The bounds of the ``size: auto`` rule (recipe.data.sizes)."""
    min: Annotated[int, Field(ge=16)]
    max: Annotated[int, Field(ge=16)]
    resize_max: Annotated[int, Field(ge=16)]

    _max = field_validator("max")(_not_under_min)


class AutoBatch(Strict):
    """The bounds of the ``batch_size: auto`` rule (recipe.data.sizes)."""
    min: PositiveInt
    max: PositiveInt
    steps: PositiveInt  # batches an epoch, at least, while the batch can still halve without going under min

    _max = field_validator("max")(_not_under_min)


class TrainConfig(Strict):
    image_size: Annotated[int, Field(ge=16)] | Literal["auto"]
    auto_size: AutoSize
    batch_size: PositiveInt | Literal["auto"]
    auto_batch: AutoBatch
    device: Literal["auto", "cpu", "cuda", "mps"]
    amp: bool
    channels_last: bool
    workers: NonNegativeInt
    label_smoothing: Annotated[float, Field(ge=0, lt=1)]
    class_weights: Literal["none", "balanced"]  # balanced: each class's loss weighted by n / (classes * count)
    sampler: Literal["shuffle", "balanced"]  # balanced: the training stages draw each class about equally often
    mix: Literal["none", "mixup", "cutmix"]  # the training stages' batches of images blended with themselves
    mix_alpha: Annotated[float, Field(gt=0)]  # the blend's share ~ Beta(mix_alpha, mix_alpha)
    ema: Annotated[float, Field(ge=0)]  # epochs: horizon of the weights' moving average (<stage>@ema); 0 = off
    clip_grad: PositiveFloat | None
    patience: PositiveInt | None
    stop_at: Literal["epoch", "cycle_end", "cycle"]  # when early stopping may stop: any epoch, (SGDR) only at a cycle's
    # end, or only at a cycle's end once that whole cycle did not lower the valid loss
    keep: Literal["best", "last"]
    dynamics_images: NonNegativeInt  # valid images whose p(true class) every epoch records; 0 = off
    nproc: PositiveInt  # processes for the training stages (DistributedDataParallel when > 1)

    def batch_for(self, images: int | None = None) -> TrainConfig:
        """This section with ``batch_size: auto`` made a number: for a stage that trains on ``images``
        train images, recipe.data.sizes's rule; for one that only scores images (None),
        ``auto_batch.max``."""
        if self.batch_size != "auto":
            return self
        rule = self.auto_batch
        size = rule.max if images is None else train_batch("auto", images, low=rule.min, high=rule.max,
                                                           steps=rule.steps)
        return self.model_copy(update={"batch_size": size})


class OverfitConfig(Strict):
    images: Annotated[int, Field(ge=1)]
    max_steps: PositiveInt  # the check stops as soon as the loss is below max_loss
    lr: Rate
    max_loss: PositiveFloat
    retries: Annotated[int, Field(ge=0)]  # again from the same weights at a tenth of the rate, when the budget runs out


class SimpleModelConfig(Strict):
    image_size: Annotated[int, Field(ge=16)]
    width: PositiveInt
    capacity_width: PositiveInt | None  # the wider net of the capacity check; None: no check
    capacity_images: PositiveInt  # train images (drawn with the seed, no augmentation) both widths fit
    capacity_epochs: PositiveInt
    capacity_fitted: PositiveFloat | None  # both losses under this: both memorised the set, the check passes
    activation: str  # a key of recipe.train.baseline.ACTIVATIONS (checked there, with the list of names)
    epochs: PositiveInt
    lr: Rate
    schedule: ScheduleConfig

    @field_validator("capacity_width")
    @classmethod
    def _wider(cls, v: int | None, info) -> int | None:
        if v is not None and "width" in info.data and v <= info.data["width"]:
            raise ValueError(f"must be greater than width ({info.data['width']}), or null to turn the check off")
        return v


class PixelsConfig(Strict):
    """Logistic regression on the raw pixels (recipe.train.pixels): a candidate select scores."""
    side: Annotated[int, Field(ge=2, le=64)] | None  # px; None: no such baseline
    C: Annotated[list[PositiveFloat], Field(min_length=1)]  # inverse L2 strengths tried; valid log loss picks


class BaselineConfig(Strict):
    on_fail: Literal["error", "warn"]
    pixels: PixelsConfig
    init_batches: PositiveInt
    init_tolerance: PositiveFloat
    zero_input_steps: PositiveInt
    zero_input_margin: Annotated[float, Field(ge=0)]
    overfit: OverfitConfig
    simple: SimpleModelConfig
    dependency_images: Annotated[int, Field(ge=2)]  # images of the batch the backprop dependency check uses
    picture_images: PositiveInt


class LrFindRules(Strict):
    """The constants of the suggestion rules (recipe.train.lr_find.suggest's keyword arguments)."""
    min_points: Annotated[int, Field(ge=2)]  # a curve needs two points for a gradient
    skip_start: Annotated[float, Field(ge=0, lt=1)]  # fraction of the planned iterations
    skip_end: NonNegativeInt  # points
    min_kept: Annotated[int, Field(ge=2)]  # points
    valley_sections: Annotated[int, Field(ge=2)]  # with valley_offset <= 1 the point stays inside the run
    valley_offset: Fraction
    minimum_divisor: PositiveFloat
    slide_lr_diff: PositiveInt  # points
    slide_thresh: PositiveFloat  # smoothed loss per point


class LrFindConfig(Strict):
    start_lr: Rate
    end_lr: Rate
    iterations: Annotated[int, Field(ge=10)]
    smoothing: Annotated[float, Field(ge=0, lt=1)]
    diverge: Annotated[float, Field(gt=1)]
    suggestion: Literal["valley", "steep", "minimum", "slide"]  # recipe.train.lr_find.RULES (tests keep them in step)
    rules: LrFindRules

    @field_validator("end_lr")
    @classmethod
    def _range(cls, v: float, info) -> float:
        if "start_lr" in info.data and v <= info.data["start_lr"]:
            raise ValueError(f"must be greater than start_lr ({info.data['start_lr']:g})")
        return v


Lr = Union[Rate, Literal["auto"]]
BnPolicy = Literal["train", "frozen", "frozen_all"]


class TrainHeadConfig(Strict):
    lr: Lr
    precompute_epochs: NonNegativeInt
    epochs: NonNegativeInt
    bn: BnPolicy
    schedule: ScheduleConfig

    @field_validator("epochs")
    @classmethod
    def _some(cls, v: int, info) -> int:
        if v + info.data.get("precompute_epochs", 1) == 0:
            raise ValueError("precompute_epochs + epochs must be at least 1")
        return v


# What an unfrozen stage trains on. train+valid is the final fit: the valid images join the
# training set, so nothing is held out from it (no early stopping; the last epoch is kept).
FitOn = Literal["train", "train+valid"]


class FinetuneConfig(Strict):
    fit_on: FitOn
    lr: Lr
    lr_mult: Annotated[float, Field(ge=1)]
    unfreeze_to: NonNegativeInt | Literal["auto"]  # the first trainable layer group; auto: recipe.train.finetune.unfreeze_rule
    unfreeze_margin: Annotated[float, Field(ge=-1, le=1)]  # auto: the head must beat the pixels baseline by more than this
    epochs: PositiveInt
    whole_body_epochs: PositiveInt | None  # auto, when the whole body trains: its epochs (None: epochs)
    bn: BnPolicy
    schedule: ScheduleConfig
    snapshots: bool  # keep the weights at the end of every SGDR cycle (candidates for select)


class ResizeConfig(Strict):
    fit_on: FitOn
    image_size: Annotated[int, Field(ge=16)] | Literal["auto"] | None
    factor: Annotated[float, Field(gt=0)] | None
    refresh_bn: bool
    head_epochs: NonNegativeInt
    head_lr: Rate
    epochs: NonNegativeInt
    lr: Rate
    lr_mult: Annotated[float, Field(ge=1)]
    bn: BnPolicy
    schedule: ScheduleConfig
    snapshots: bool

    @field_validator("factor")
    @classmethod
    def _one_of(cls, v: float | None, info) -> float | None:
        if (v is None) == (info.data.get("image_size") is None):
            raise ValueError("set exactly one of resize.image_size and resize.factor")
        return v

