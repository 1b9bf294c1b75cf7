"""The search space against the real config, and what each trial asks and passes to DVC.

Contract: :func:`compose_config` composes conf/ with the fixed overrides as ``dvc exp run -S``
does; :func:`check_space` checks every key of the space names a params key or a config group
(whose choices are its option files) and returns one :class:`Param` per key, carrying the
config's current value as the space spells it, or :data:`_UNSET` where the space cannot hold
it (``train_head.lr: auto``), so the default trial leaves that key to the config. Errors are one
:class:`ConfigError` line. :func:`suggest` asks an Optuna trial for the values;
:func:`override` writes one as a Hydra ``-S`` override that composes back to exactly that value.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipe.core.config import validate
from recipe.core.errors import ConfigError
from recipe.search.config import CategoricalDist, Distribution, FloatDist, IntDist, SearchConfig

_UNSET = object()


@dataclass(frozen=True)
class Param:
    key: str        # dotted params key, or a config group (augment, schedule@finetune.schedule)
    dist: Any       # FloatDist | IntDist | CategoricalDist
    group: bool
    default: Any    # the config's current value (group: the option chosen); _UNSET when outside the space


def compose_config(root: Path, overrides: list[str]) -> tuple[dict, dict]:
    """conf/ plus the fixed overrides, as `dvc exp run -S` composes it: (values, group choices)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    from recipe.core.compose import register_resolver

    register_resolver(root)
    try:
        with initialize_config_dir(config_dir=str((root / "conf").resolve()), version_base=None):
            cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    except HydraException as exc:
        raise ConfigError(f"search.overrides = {list(overrides)}: {str(exc).splitlines()[0]}") from None
    choices = {k: v for k, v in OmegaConf.to_container(cfg.hydra.runtime.choices).items() if not k.startswith("hydra/")}
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra")
    return OmegaConf.to_container(OmegaConf.create(plain), resolve=True), choices


def check_space(cfg: SearchConfig, values: dict, choices: dict, conf: Path) -> list[Param]:
    """Every key of the space names a real params key or group; each group choice is a file."""
    fixed = {o.split("=", 1)[0].lstrip("+~") for o in cfg.overrides}
    params = []
    for key, raw in cfg.space.items():
        dist = validate(f"search.space.{key}", raw, Distribution)
        if key in fixed:
            raise ConfigError(f"search.space.{key}: also a fixed override; drop one of the two")
        if key in choices:
            params.append(_group_param(key, dist, choices[key], conf))
            continue
        node = values
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"search.space.{key}: not a params key or config group (check the spelling "
                                  "against params.yaml; groups: " + ", ".join(sorted(choices)) + ")")
            node = node[part]
        if isinstance(node, (dict, list)):
            raise ConfigError(f"search.space.{key}: a {type(node).__name__} in params.yaml; the space takes single values")
        params.append(Param(key, dist, False, _in_space(node, dist)))
    return params


def _group_param(key: str, dist: Any, chosen: str, conf: Path) -> Param:
    folder = conf / key.split("@")[0]
    options = sorted(p.stem for p in folder.glob("*.yaml"))
    if not isinstance(dist, CategoricalDist):
        raise ConfigError(f"search.space.{key}.type = {dist.type!r}: a config group takes type categorical "
                          f"with choices from {options}")
    for choice in dist.choices:
        if choice not in options:
            raise ConfigError(f"search.space.{key}.choices: {choice!r} is not an option of {key} "
                              f"(files in {folder.relative_to(conf.parent)}/: {', '.join(options)})")
    return Param(key, dist, True, _in_space(chosen, dist))


def _in_space(value: Any, dist: Any) -> Any:
    """The default as the space spells it, or _UNSET when the space cannot hold it (lr: auto)."""
    if isinstance(dist, CategoricalDist):
        for choice in dist.choices:
            if type(choice) is type(value) and choice == value or (_number(choice) and _number(value) and choice == value):
                return choice
        return _UNSET
    if not _number(value) or not dist.low <= value <= dist.high:
        return _UNSET
    if isinstance(dist, IntDist):
        return int(value) if value == int(value) and (int(value) - dist.low) % dist.step == 0 else _UNSET
    if dist.step is not None and not math.isclose((value - dist.low) / dist.step % 1, 0, abs_tol=1e-9):
        return _UNSET
    return float(value)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def suggest(trial: Any, params: list[Param], only: set[str] | None = None) -> dict[str, Any]:
    """Ask the trial for each param's value (``only``: just those keys, as for the default trial)."""
    out = {}
    for p in params:
        if only is not None and p.key not in only:
            continue
        d = p.dist
        if isinstance(d, FloatDist):
            out[p.key] = trial.suggest_float(p.key, d.low, d.high, log=d.log, step=d.step)
        elif isinstance(d, IntDist):
            out[p.key] = trial.suggest_int(p.key, d.low, d.high, log=d.log, step=d.step)
        else:
            out[p.key] = trial.suggest_categorical(p.key, d.choices)
    return out


def override(key: str, value: Any) -> str:
    """One ``-S`` value in Hydra's override grammar: ``finetune.lr=0.00031``, ``augment=side_on``.
    Floats keep every digit (repr), so the run uses exactly the value Optuna recorded."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = repr(value)  # 1e-05, 0.0003: Hydra reads both as floats
    elif isinstance(value, int):
        text = str(value)
    elif re.fullmatch(r"[A-Za-z_][\w./-]*", value) and value.lower() not in ("true", "false", "null", "nan", "inf"):
        text = value
    else:  # quoted, so Hydra keeps it a string: '3', 'a b', 'null'
        text = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return f"{key}={text}"
