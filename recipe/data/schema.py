"""Typed schemas for the params sections the stages read.

No field has a default here: defaults live once, in ``conf/``. Models forbid unknown keys and
are frozen, so a typo in a config is an error and a stage cannot mutate its own settings.

The schemas of the sections the data package's stages read. This module imports only the schema
modules of the packages below data (tests/test_layers.py), so a change here reruns the stages
that load ``recipe.data``, not every stage.

Names that a registry owns (TTA view sets, optimizers, schedules) are checked against that
registry by the code that builds from it, and a test keeps the two in step.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, field_validator, model_validator
from recipe.core.schema import Strict


class SoftLabels(Strict):
    column: str  # an index column: per image, the probability that it belongs to `positive`
    positive: str  # one of the two classes


class _DataCommon(Strict):
    limit: PositiveInt | None  # take a seeded, stratified subset of this many images
    stratify_column: str | None  # an extra index column the split also stratifies on
    soft_labels: SoftLabels | None  # train on annotated probabilities instead of the hard labels


class ElpvData(_DataCommon):
    source: Literal["elpv"]
    task: Literal["binary", "four_class"]


class FolderData(_DataCommon):
    source: Literal["folder"]
    task: Literal["single_label", "multi_label"]  # multi_label: a one-line error at ingest (one folder, one label)
    path: str  # ImageFolder layout: one subfolder per class


class CsvData(_DataCommon):
    source: Literal["csv"]
    path: str  # the dataset folder, holding the labels file and the image folder
    labels_file: str  # relative to path
    image_dir: str  # relative to path
    fname_col: str
    label_col: str
    suffix: str  # appended to each file name in the labels file ("" or ".png")
    task: Literal["single_label", "multi_label"]  # multi_label: label_col holds a list of labels per image
    label_delim: Annotated[str, Field(min_length=1)]  # what separates them (fastai's label_delim; " " by default)


DataConfig = Annotated[Union[ElpvData, FolderData, CsvData], Field(discriminator="source")]


class SplitDataConfig(Strict):
    """The part of ``data`` the split stage reads (dvc.yaml lists just these keys for it)."""
    task: Literal["binary", "four_class", "single_label", "multi_label"]
    stratify_column: str | None
    soft_labels: SoftLabels | None


class AuditConfig(Strict):
    drop_unreadable: bool
    drop_exact_duplicates: bool
    conflicting_labels: Literal["drop", "keep"]
    near_dup_bits: Annotated[int, Field(ge=0, le=32)]  # Hamming radius on the 64-bit pHash
    max_pixels: PositiveInt  # larger images are refused before decoding (decompression bombs)
    min_side: PositiveInt  # px: a shorter side below this is named too_small (1: none is)
    too_small: Literal["drop", "keep"]
    size_outlier_factor: Annotated[float, Field(gt=1)]  # area this many times above or below the median
    size_outliers: Literal["drop", "keep"]
    min_images: PositiveInt  # fewer usable images than this stops the stage
    min_per_class: PositiveInt  # classes with fewer usable images are reported as too small
    stats_max_side: PositiveInt  # channel statistics are taken on images reduced to this side
    samples_per_class: PositiveInt
    max_duplicate_groups: NonNegativeInt  # groups drawn in the duplicates picture
    workers: NonNegativeInt  # 0: one per CPU core


class SplitConfig(Strict):
    fractions: dict[Literal["train", "valid", "test"], Annotated[float, Field(ge=0, le=1)]]
    stratify: bool
    keep_groups: bool  # false: split per image, near-duplicate groups may straddle splits (the published ELPV protocol)
    seed: int

    @field_validator("fractions")
    @classmethod
    def _sum_to_one(cls, v: dict[str, float]) -> dict[str, float]:
        if set(v) != {"train", "valid", "test"}:
            raise ValueError("needs train, valid and test")
        if abs(sum(v.values()) - 1.0) > 1e-6:
            raise ValueError(f"must sum to 1 (they sum to {sum(v.values()):g})")
        if v["train"] <= 0 or v["test"] <= 0:
            raise ValueError("train and test must be greater than 0")
        return v


class CvConfig(Strict):
    """k-fold cross-validation over train + valid, its label issues and their policy (recipe/decide/cv.py)."""
    folds: Annotated[int, Field(ge=0, le=20)]  # 0 = off; 2 to 20 folds (hydra_plugins' MAX_FOLDS)
    stages: Literal["finetune", "resize"]  # the last training stage each fold runs
    policy: Literal["report", "drop", "relabel"]  # what the final fit does with the train images flagged
    max_suspects: PositiveInt | None  # act on at most this many (the highest ranked); None: all flagged
    grid_images: NonNegativeInt  # tiles in the picture of the top suspects
    train_folds: list[NonNegativeInt]  # derived by conf/'s resolver: the folds the per-fold stages run
    resize_folds: list[NonNegativeInt]

    @model_validator(mode="after")
    def _folds(self):
        if self.folds == 1:
            raise ValueError("cv.folds = 1: one fold holds everything out; use 0 (off) or at least 2")
        if self.train_folds != list(range(self.folds if self.folds > 1 else 0)):
            raise ValueError(f"cv.train_folds = {self.train_folds}: derived from cv.folds by conf/'s resolver, "
                             "not set by hand (recompose params.yaml)")
        return self

