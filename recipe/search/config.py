"""The search file: ``conf/search/<name>.yaml`` (or any path) read into a validated :class:`SearchConfig`.

Contract: :func:`search_file` turns ``--space`` (a name in conf/search/ or a path) into a file;
:func:`load_search` reads it, following ``extends`` (mappings merged key by key, a ``space``
replaced whole), applies the command line's values and validates the result strictly, or raises
:class:`ConfigError` with one line naming the key, the value, what is allowed and the file. Every
default lives in conf/search/default.yaml: the schemas here require every key, except a
distribution's own options, whose defaults are Optuna's.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, field_validator, model_validator

from recipe.core.config import validate
from recipe.core.errors import ConfigError
from recipe.core.schema import Strict
from recipe.search.samplers import SAMPLERS

SEARCH_DIR = Path("conf/search")
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"  # a study name must make valid git refs: <study>-<N>


class FloatDist(Strict):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False  # Optuna's own defaults for a distribution, not recipe defaults
    step: PositiveFloat | None = None

    @model_validator(mode="after")
    def _range(self):
        return _check_range(self)


class IntDist(Strict):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: PositiveInt = 1

    @model_validator(mode="after")
    def _range(self):
        return _check_range(self)


class CategoricalDist(Strict):
    type: Literal["categorical"]
    choices: Annotated[list[Union[bool, int, float, str, None]], Field(min_length=1)]

    @field_validator("choices")
    @classmethod
    def _unique(cls, v):
        if len({json.dumps(c) for c in v}) != len(v):
            raise ValueError("choices must be distinct")
        return v


Distribution = Annotated[Union[FloatDist, IntDist, CategoricalDist], Field(discriminator="type")]


def _check_range(d):
    if not d.low < d.high:
        raise ValueError(f"low must be below high (got low {d.low}, high {d.high})")
    if d.log and d.low <= 0:
        raise ValueError(f"log needs low > 0 (got low {d.low})")
    if d.log and d.step not in (None, 1):
        raise ValueError("log and step cannot be used together")
    return d


class Objective(Strict):
    metrics: str  # a metrics file, relative to the project root
    key: Annotated[str, Field(min_length=1)]  # dotted key in it
    direction: Literal["minimize", "maximize"]

    @field_validator("metrics")
    @classmethod
    def _relative(cls, v):
        if Path(v).is_absolute() or ".." in Path(v).parts:
            raise ValueError("must be a path inside the project, relative to its root")
        return v

    @field_validator("key")
    @classmethod
    def _not_test(cls, v):
        if any(part.startswith("test") for part in v.split(".")):
            raise ValueError("a test-split metric would leak the test split into the choice of params; "
                             "use a validation metric (valid_loss, valid_accuracy)")
        return v


class Sampler(Strict):
    name: str  # a key of recipe.search.samplers.SAMPLERS
    seed: int | None
    n_startup_trials: NonNegativeInt

    @field_validator("name")
    @classmethod
    def _known(cls, v):
        if v not in SAMPLERS:
            raise ValueError(f"must be one of {', '.join(map(repr, SAMPLERS))}")
        return v


class SearchConfig(Strict):
    study: Annotated[str, Field(pattern=f"^{_NAME}$")]
    trials: PositiveInt
    storage: str | None
    overrides: list[str]
    objective: Objective
    sampler: Sampler
    space: Annotated[dict[str, dict[str, Any]], Field(min_length=1)]


def search_file(space: str, root: Path) -> Path:
    """``--space``: a path to a YAML file, or a name in conf/search/."""
    for path in (Path(space), root / space, root / SEARCH_DIR / f"{space}.yaml"):
        if path.is_file():
            return path
    names = ", ".join(sorted(p.stem for p in (root / SEARCH_DIR).glob("*.yaml"))) or "none"
    raise ConfigError(f"--space {space!r}: no such file or name in {SEARCH_DIR}/ (there: {names})")


def load_search(path: Path, **cli: Any) -> SearchConfig:
    """Read a search file (following ``extends``), apply the command line's values, validate.

    ``cli`` holds ``trials``, ``storage``, ``study``, ``seed`` (None = keep the file's) and
    ``overrides`` (appended to the file's fixed overrides).
    """
    data = _read_extending(Path(path), seen=())
    for key in ("trials", "storage", "study"):
        if cli.get(key) is not None:
            data[key] = cli[key]
    if cli.get("seed") is not None:
        data.setdefault("sampler", {})["seed"] = cli["seed"]
    if cli.get("overrides"):
        data["overrides"] = list(data.get("overrides") or []) + list(cli["overrides"])
    try:
        cfg = validate("search", data, SearchConfig)
        for key, dist in cfg.space.items():
            validate(f"search.space.{key}", dist, Distribution)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (in {path})") from None
    return cfg


def _read_extending(path: Path, seen: tuple) -> dict:
    if path.resolve() in seen:
        raise ConfigError(f"{path}: extends itself (through {' -> '.join(p.name for p in seen)})")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = data.pop("extends", None)
    if base is None:
        return data
    parent = path.parent / f"{base}.yaml"
    if not isinstance(base, str) or not parent.is_file():
        raise ConfigError(f"search.extends = {base!r}: no such file {parent} (in {path})")
    merged = _merge(_read_extending(parent, seen + (path.resolve(),)), data)
    if "space" in data:  # a space is replaced whole: a file that names its params searches only those
        merged["space"] = data["space"]
    return merged


def _merge(base: dict, over: dict) -> dict:
    """Mappings merge key by key; anything else (lists included) is replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
