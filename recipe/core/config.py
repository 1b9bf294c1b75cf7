"""Read one stage's section of params.yaml and validate it against a typed schema.

Contract: ``load_section("audit", AuditConfig)`` returns the validated (frozen) value, or raises
:class:`ConfigError` whose message is a single line naming the key, the value given and what
is allowed. Schemas carry no defaults: every default is written once, in ``conf/``.

:func:`stage_params` is how a stage reads its params: exactly the keys its ``params:`` list in
dvc.yaml names (read from dvc.yaml itself), so that list is the only one. A stage that reads a
section dvc.yaml does not give it fails at once, and the stage logs to MLflow just what DVC
says it depends on.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from recipe.core.errors import ConfigError

PARAMS_FILE = "params.yaml"
MISSING = "???"  # Hydra's marker for a value the user must supply


def read_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found; run from the project root (where dvc.yaml is)")
    with path.open(encoding="utf-8") as f:
        params = yaml.safe_load(f) or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return params


class StageParams:
    """The params one stage depends on: ``used`` holds exactly the keys dvc.yaml lists for it,
    nested as in params.yaml (``finetune.unfreeze_to`` gives ``{"finetune": {"unfreeze_to": 1}}``)."""

    def __init__(self, stage: str, keys: list[str], params: dict[str, Any]):
        self.stage, self.keys, self.used = stage, keys, {}
        for key in keys:
            node, target, parts = params, self.used, key.split(".")
            for i, part in enumerate(parts):
                if not isinstance(node, dict) or part not in node:
                    raise ConfigError(f"{key}: listed for stage {stage} in dvc.yaml but missing from params.yaml "
                                      "(recompose it from conf/)")
                node = node[part]
                if i < len(parts) - 1:
                    target = target.setdefault(part, {})
            target[parts[-1]] = node

    def has(self, name: str) -> bool:
        return name in self.used

    def section(self, name: str, schema: Any) -> Any:
        """The validated section ``name`` (or the part of it the stage lists), or a one-line error
        when dvc.yaml does not list it for this stage."""
        if name not in self.used:
            raise ConfigError(f"stage {self.stage} reads {name!r}, which its params list in dvc.yaml does not "
                              "name: add it there")
        return validate(name, self.used[name], schema)


def dvc_params_keys(stage: str, root: str | Path = ".") -> list[str]:
    """The params keys (of params.yaml) that ``stage`` depends on: its ``params:`` list in
    dvc.yaml (a ``foreach`` stage's ``do:`` body for ``name@key``). Read with PyYAML rather than
    DVC's index, which costs each stage about a second to build; tests/test_config.py checks the
    two agree on every stage of the real dvc.yaml."""
    path = Path(root) / "dvc.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: not found; run the stage from the project root (dvc repro)")
    with path.open(encoding="utf-8") as f:
        stages = (yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}).get("stages") or {}
    name, at, _ = stage.partition("@")
    entry = stages.get(name)
    if not isinstance(entry, dict) or bool(at) != ("foreach" in entry or "matrix" in entry):
        raise ConfigError(f"{stage}: no such stage in dvc.yaml")
    body = entry.get("do", entry)
    keys: list[str] = []
    for item in body.get("params") or []:
        if isinstance(item, str):
            keys.append(item)
        else:  # {file: [keys]}: only params.yaml's are the stage's config
            for file, listed in item.items():
                if Path(file).name == PARAMS_FILE:
                    keys.extend(listed or [])
    return keys


def stage_params(stage: str, params: dict[str, Any] | None = None, root: str | Path = ".") -> StageParams:
    """What ``stage`` may read of params.yaml: the keys dvc.yaml lists for it."""
    return StageParams(stage, dvc_params_keys(stage, root), read_params() if params is None else params)


def load_section(name: str, schema: Any, params: dict[str, Any] | None = None) -> Any:
    """Validate ``params[name]`` (read from params.yaml when not given) against ``schema``."""
    params = read_params() if params is None else params
    if name not in params:
        raise ConfigError(f"{name}: section missing from params.yaml (recompose it from conf/)")
    return validate(name, params[name], schema)


def validate(name: str, section: Any, schema: Any) -> Any:
    missing = _find_missing(section, name)
    if missing:
        raise ConfigError(f"{missing} = '???': a value is required (set it with -S {missing}=...)")
    try:
        return TypeAdapter(schema).validate_python(section)
    except ValidationError as exc:
        raise ConfigError(_one_line(name, section, exc)) from None


def section_hash(section: Any) -> str:
    """A short, stable fingerprint of a params section (logged as the params_hash tag)."""
    blob = json.dumps(section, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def flatten(section: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are kept as their string form."""
    if not isinstance(section, dict):
        return {prefix: section}
    out: dict[str, Any] = {}
    for key, value in section.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        out.update(flatten(value, full) if isinstance(value, dict) else {full: value})
    return out


def _find_missing(section: Any, prefix: str) -> str | None:
    if section == MISSING:
        return prefix
    if isinstance(section, dict):
        for key, value in section.items():
            found = _find_missing(value, f"{prefix}.{key}")
            if found:
                return found
    return None


def _one_line(name: str, section: Any, exc: ValidationError) -> str:
    err = exc.errors()[0]
    # Walk the error location through the user's mapping, dropping pydantic's own parts
    # (such as the tag of a discriminated union) that are not keys the user wrote.
    key, node = [name], section
    for part in err["loc"]:
        if isinstance(node, dict) and part in node:
            key.append(str(part))
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            key[-1] += f"[{part}]"
            node = node[part]
    value = err.get("input", node)
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        ctx = err.get("ctx", {})
        tag_key = ".".join(key + [str(ctx.get("discriminator", "")).strip("'")])
        allowed = ctx.get("expected_tags", "")
        if err["type"] == "union_tag_not_found":
            return f"{tag_key}: a value is required (one of {allowed})"
        return f"{tag_key} = {ctx.get('tag')!r}: must be one of {allowed}"
    if err["type"] == "extra_forbidden":
        return f"{'.'.join(key)}: unknown key (not in the schema; check the spelling)"
    if err["type"] == "missing":
        return f"{'.'.join(key)}.{err['loc'][-1]}: a value is required"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{'.'.join(key)} = {value!r}: {msg}"
