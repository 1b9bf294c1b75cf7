"""Where the project root is, and path safety checks.

The project root is where the MLflow store lives. DVC sets ``DVC_ROOT`` for stage commands;
queued and ``--temp`` experiments run in a copy under ``<root>/.dvc/tmp/exps/``, so a root
found inside such a copy is walked back up to the real one, or their runs would be lost
with the copy.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

_EXP_COPY = (".dvc", "tmp", "exps")


def project_root() -> Path:
    root = os.environ.get("DVC_ROOT") or _git_toplevel() or os.getcwd()
    return outside_exp_copy(Path(root).resolve())


def outside_exp_copy(path: Path) -> Path:
    parts = path.parts
    for i in range(len(parts) - len(_EXP_COPY) + 1):
        if parts[i : i + len(_EXP_COPY)] == _EXP_COPY:
            return Path(*parts[:i])
    return path


def _git_toplevel() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def is_within(path: Path, root: Path) -> bool:
    """True when ``path``, with every link resolved, lies inside ``root`` (also resolved)."""
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(root))
    except ValueError:
        return False
    return True
