"""Compose ``conf/`` into ``params.yaml`` exactly as ``dvc exp run -S ...`` does.

``python -m recipe.core.compose [OVERRIDE ...]`` rewrites params.yaml (``make params``); the drift
test composes into a temporary file with this same function and compares.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def register_resolver(root: Path) -> None:
    """conf/'s resolver (hydra_plugins/finetune_recipe), which DVC's composition loads from the
    plugin path; loaded from the file here, since Hydra scans its plugins once per process."""
    import importlib.util

    file = Path(root) / "hydra_plugins" / "finetune_recipe" / "__init__.py"
    if file.is_file():
        spec = importlib.util.spec_from_file_location("finetune_recipe_resolver", file)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def compose(root: Path, overrides: list[str], output: Path) -> Path:
    """Call DVC's own Hydra composition with the arguments DVC passes for this repo."""
    from dvc.repo import Repo
    from dvc.utils.hydra import compose_and_dump

    register_resolver(root)
    hydra = Repo(str(root)).config.get("hydra", {})
    compose_and_dump(
        output,
        os.path.join(root, hydra.get("config_dir", "conf")),
        None,
        hydra.get("config_name", "config"),
        os.path.join(root, hydra.get("plugins_path", "")),
        list(overrides),
    )
    return output


if __name__ == "__main__":
    root = Path.cwd()
    print(compose(root, sys.argv[1:], root / "params.yaml"))
