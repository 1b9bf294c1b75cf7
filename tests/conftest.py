"""Shared test helpers: the real config, small image datasets made on the fly, subprocess env."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# Under pytest-xdist (make test: two processes) each test process, and every stage it starts,
# gets its share of the cores for torch's OpenMP threads: two processes of two threads each on two
# cores wait on each other's spinning threads. Set before anything imports torch.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _WORKERS))
# The ranges of the augmentation's random draws, as conf/ sets them for every preset.
AUGMENT_RANGES = {k: tuple(v) for k, v in yaml.safe_load((REPO / "params.yaml").read_text())["augment"].items()
                  if k in ("blur_sigma", "crop_aspect")}


def noise_image(path: Path, seed: int, size: int = 48, mode: str = "L") -> Path:
    """A random picture, distinct for each seed (blocky, so pHash sees structure)."""
    rng = np.random.default_rng(seed)
    channels = 1 if mode == "L" else 3
    small = rng.integers(0, 256, size=(8, 8, channels), dtype=np.uint8)
    arr = np.kron(small, np.ones((size // 8, size // 8, 1), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr[..., 0] if channels == 1 else arr, mode).save(path)
    return path


def image_folder(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """An ImageFolder dataset: ``root/<class>/<class>_<i>.png`` with distinct images."""
    k = seed * 10_000
    for label, n in counts.items():
        for i in range(n):
            k += 1
            noise_image(root / label / f"{label}_{i:03d}.png", k)
    return root


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment a user's shell would give: the project's interpreter first on PATH, and
    none of the variables DVC or MLflow set for the process running the tests."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_STAGE", "MLFLOW_TRACKING_URI", "RECIPE_PIPELINE_ID")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("GIT_AUTHOR_NAME", "test")
    env.setdefault("GIT_AUTHOR_EMAIL", "test@localhost")
    env.setdefault("GIT_COMMITTER_NAME", "test")
    env.setdefault("GIT_COMMITTER_EMAIL", "test@localhost")
    env.update(extra)
    return env


@pytest.fixture
def params() -> dict:
    """The committed params.yaml (the real config)."""
    return yaml.safe_load((REPO / "params.yaml").read_text())


def copy_project(dest: Path) -> Path:
    """The repository's tracked and unignored files (not tests/ or bench/), in a fresh git repo."""
    import shutil
    import subprocess

    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                            text=True, check=True)
    for rel in listed.stdout.splitlines():
        if (REPO / rel).is_file() and not rel.startswith(("tests/", "bench/", "outputs/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


def run_cmd(*cmd: str, cwd: Path, env: dict | None = None, timeout: float = 1200) -> str:
    import subprocess

    proc = subprocess.run(cmd, cwd=cwd, env=env or subprocess_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def build_tiny_project(dest: Path, python: str = sys.executable, env: dict | None = None) -> Path:
    """A git + DVC copy of the project on the tiny config (48 ELPV images from the installed
    package) at ``dest``, after one `dvc repro` run by ``python``, its dvc.lock committed."""
    from recipe.core.compose import compose

    proj = copy_project(dest)
    config = proj / "conf/config.yaml"
    config.write_text(config.read_text().replace("- experiment: null", "- experiment: tiny"))
    compose(proj, [], proj / "params.yaml")
    run_cmd("git", "add", "-A", cwd=proj, env=env)
    run_cmd("git", "commit", "-qm", "tiny fixture", cwd=proj, env=env)
    run_cmd(python, "-m", "dvc", "repro", cwd=proj, env=env)
    run_cmd("git", "add", "-A", cwd=proj, env=env)
    run_cmd("git", "commit", "-qm", "lock", cwd=proj, env=env)
    return proj


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Path:
    """:func:`build_tiny_project` once per test run, shared by every test that reads it (copy it
    before changing anything: ``shutil.copytree(tiny_project, dest, symlinks=True)``). Under
    pytest-xdist (``make test``: two processes) the first worker to ask builds it in the run's
    shared temporary folder, under a file lock, and the other waits and reuses it."""
    import os

    from filelock import FileLock

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build_tiny_project(tmp_path_factory.mktemp("tiny") / "proj")
    shared = tmp_path_factory.getbasetemp().parent  # one folder for all the workers of this run
    proj, built = shared / "tiny" / "proj", shared / "tiny.built"
    with FileLock(str(shared / "tiny.lock")):
        if not built.exists():
            proj.parent.mkdir(parents=True, exist_ok=True)
            build_tiny_project(proj)
            built.touch()
    return proj


def store_runs(proj: Path) -> list:
    """Every run of the project's MLflow experiment, from its SQLite store."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{proj}/mlflow.db")
    try:
        return mlflow.search_runs(experiment_names=["finetune-recipe"], output_format="list")
    finally:
        mlflow.set_tracking_uri(None)
