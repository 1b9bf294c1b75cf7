"""The base of the typed schemas (``Strict``), the types every package's schema uses, and the
sections every stage reads (the seed, tracking).

No field has a default here: defaults live once, in ``conf/``. Models forbid unknown keys and
are frozen, so a typo in a config is an error and a stage cannot mutate its own settings.

This module imports no other module of the project (not even lazily): every stage loads it, so
whatever it imported would become a dependency of every stage in dvc.yaml (tests/test_deps.py).
Names that a registry owns (TTA view sets, optimizers, schedules) are checked against that
registry by the code that builds from it, and a test keeps the two in step.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    # strict: no coercion (``true`` or ``"32"`` is no batch size); no inf or NaN in any number.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class TrackingConfig(Strict):
    experiment: str = Field(min_length=1)  # MLflow experiment name


Seed = Annotated[int, Field(strict=True, ge=0)]  # the one seed of the recipe


# --- the network and its training -----------------------------------------------------------

PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Rate = Annotated[float, Field(gt=0, le=100)]  # a learning rate

