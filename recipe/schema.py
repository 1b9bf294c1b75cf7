"""Typed schemas for the params sections the stages read.

No field has a default here: defaults live once, in ``conf/``. Models forbid unknown keys and
are frozen, so a typo in a config is an error and a stage cannot mutate its own settings.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, field_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _DataCommon(Strict):
    limit: PositiveInt | None  # take a seeded, stratified subset of this many images
    stratify_column: str | None  # an extra index column the split also stratifies on


class ElpvData(_DataCommon):
    source: Literal["elpv"]
    task: Literal["binary", "four_class"]


class FolderData(_DataCommon):
    source: Literal["folder"]
    path: str  # ImageFolder layout: one subfolder per class


class CsvData(_DataCommon):
    source: Literal["csv"]
    path: str  # the dataset folder, holding the labels file and the image folder
    labels_file: str  # relative to path
    image_dir: str  # relative to path
    fname_col: str
    label_col: str
    suffix: str  # appended to each file name in the labels file ("" or ".png")


DataConfig = Annotated[Union[ElpvData, FolderData, CsvData], Field(discriminator="source")]


class AuditConfig(Strict):
    drop_unreadable: bool
    drop_exact_duplicates: bool
    conflicting_labels: Literal["drop", "keep"]
    near_dup_bits: Annotated[int, Field(ge=0, le=32)]  # Hamming radius on the 64-bit pHash
    max_pixels: PositiveInt  # larger images are refused before decoding (decompression bombs)
    min_images: PositiveInt  # fewer usable images than this stops the stage
    min_per_class: PositiveInt  # classes with fewer usable images are reported as too small
    stats_max_side: PositiveInt  # channel statistics are taken on images reduced to this side
    samples_per_class: PositiveInt
    max_duplicate_groups: NonNegativeInt  # groups drawn in the duplicates picture
    workers: NonNegativeInt  # 0: one per CPU core


class SplitConfig(Strict):
    fractions: dict[Literal["train", "valid", "test"], Annotated[float, Field(ge=0, le=1)]]
    stratify: bool
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


class TrackingConfig(Strict):
    experiment: str = Field(min_length=1)  # MLflow experiment name


Seed = Annotated[int, Field(strict=True, ge=0)]  # the one seed of the recipe
