"""Every schema field is required: defaults live once, in conf/ (the contract of every package's schema.py).

The walk starts from every name the schema modules define and goes through field annotations,
unions (``X | None``, discriminated ones), ``Annotated``, lists, tuples and dicts, so a model
reachable only as a nested field is checked too.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union, get_args

import pytest
from pydantic import BaseModel, Field

from recipe.core import schema as core_schema
from recipe.data import schema as data_schema
from recipe.decide import schema as decide_schema
from recipe.ship import schema as ship_schema
from recipe.train import schema as train_schema

SCHEMAS = (core_schema, data_schema, train_schema, decide_schema, ship_schema)


def models(root: Any, seen: set[type] | None = None) -> set[type]:
    """Every pydantic model reachable from ``root`` (a model, or any annotation holding some)."""
    seen = set() if seen is None else seen
    if isinstance(root, type) and issubclass(root, BaseModel):
        if root not in seen:
            seen.add(root)
            for field in root.model_fields.values():
                models(field.annotation, seen)
        return seen
    for arg in get_args(root):  # Union, Annotated (the metadata has no args), list, dict, tuple, Literal
        models(arg, seen)
    return seen


def defaults(model: type[BaseModel]) -> list[str]:
    """``Model.field = default`` for each field of ``model`` that is not required."""
    return [f"{model.__name__}.{name} = {field.get_default(call_default_factory=True)!r}"
            for name, field in model.model_fields.items() if not field.is_required()]


def everything() -> set[type]:
    found: set[type] = set()
    for module in SCHEMAS:
        for value in vars(module).values():
            models(value, found)
    return {m for m in found if m.__module__ in {s.__name__ for s in SCHEMAS}}


def named(name: str):
    return next(getattr(s, name) for s in SCHEMAS if hasattr(s, name))


def test_the_walk_reaches_nested_models():
    found = everything()
    # reachable only through a field: a model in a list/union inside another model
    for name in ("SoftLabels", "HeadConfig", "OverfitConfig", "SimpleModelConfig", "LrFindRules", "TtaConfig",
                 "EvalMetricsConfig", "LogModelConfig", "Sgdr", "OneCycle", "SgdConfig", "AdamConfig"):
        assert named(name) in found, name


def test_no_schema_field_has_a_default():
    found = sorted(everything(), key=lambda m: m.__name__)
    bad = [d for m in found for d in defaults(m)]
    assert not bad, "defaults belong in conf/, not in recipe/*/schema.py: " + "; ".join(bad)


def test_every_schema_is_strict_and_frozen():
    for m in everything():
        assert m.model_config.get("extra") == "forbid" and m.model_config.get("frozen") is True, m.__name__


# --- the check itself fails where it should -------------------------------------------------

class _Leaf(core_schema.Strict):
    name: Literal["leaf"]
    value: int = 3  # a default, nested two levels down


class _Other(core_schema.Strict):
    name: Literal["other"]


class _Holder(core_schema.Strict):
    items: list[Annotated[Union[_Leaf, _Other], Field(discriminator="name")]] | None


class _Factory(core_schema.Strict):
    tags: list[str] = Field(default_factory=list)


@pytest.mark.parametrize("root,expected", [(_Holder, ["_Leaf.value = 3"]), (_Factory, ["_Factory.tags = []"]),
                                           (dict[str, tuple[_Other, _Leaf]], ["_Leaf.value = 3"])])
def test_the_check_finds_a_default_through_unions_and_annotations(root, expected):
    assert [d for m in sorted(models(root), key=lambda m: m.__name__) for d in defaults(m)] == expected
