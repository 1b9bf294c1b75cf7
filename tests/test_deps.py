"""The lock file tells the truth: every stage depends on every project file its code loads.

For each stage of dvc.yaml (from DVC's own index), the project files its command loads are
found two ways and united: the modules in ``sys.modules`` after importing the stage's module in
a fresh interpreter, and every ``import`` statement of those files, function-level ones
included (followed transitively, so a lazy import inside a function counts too). Each must be
covered by the stage's deps, or editing it would leave ``dvc repro`` saying "didn't change" while
the stage's outputs are stale. recipe/ is listed by package (``recipe/train``: every file in it),
stages/ by file; a code dep that covers nothing the stage loads reruns it for nothing.
"""
from __future__ import annotations

import ast
import functools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, subprocess_env

PACKAGES = ("recipe", "stages")


def stage_deps() -> dict[str, tuple[str, set[str]]]:
    """Each stage's command and its deps (paths relative to the repository), from DVC's index."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        return {s.name: (s.cmd, {Path(d.fs_path).resolve().relative_to(REPO).as_posix() for d in s.deps
                                 if not getattr(d, "params", None) and Path(d.fs_path).resolve().is_relative_to(REPO)})
                for s in repo.index.stages if getattr(s, "cmd", None)}


def module_file(name: str) -> str | None:
    """``recipe.data.loader`` -> ``recipe/data/loader.py`` (or a package's __init__.py)."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = REPO.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path.relative_to(REPO).as_posix()
    return None


def imported_by(rel: str) -> set[str]:
    """Project files named by any import statement of ``rel`` (at any depth of its code), with
    the packages they sit in (importing ``recipe.data.loader`` runs ``recipe/data/__init__.py``)."""
    tree = ast.parse((REPO / rel).read_text(encoding="utf-8"))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]  # `from recipe import tracking`
    found = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:i]))
            if path:
                found.add(path)
    return found


def static_closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        todo += sorted(imported_by(rel) - seen)
    return seen


@functools.cache
def runtime_files(module: str) -> frozenset[str]:
    """Project files in ``sys.modules`` after importing ``module`` in a new interpreter."""
    code = (f"import importlib, json, sys; importlib.import_module({module!r}); "
            "print(json.dumps(sorted(getattr(m, '__file__', None) or '' for m in list(sys.modules.values()))))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    files = {Path(f).resolve() for f in json.loads(proc.stdout.splitlines()[-1]) if f}
    return frozenset(f.relative_to(REPO).as_posix() for f in files
                     if f.is_relative_to(REPO) and f.relative_to(REPO).parts[0] in PACKAGES)


def stage_module(cmd: str) -> str:
    match = re.search(r"python -m ([\w.]+)", cmd)
    assert match, f"{cmd!r}: a stage command is `python -m <module> ...`"
    return match.group(1)


STAGES = stage_deps()


def covered(path: str, deps: set[str]) -> bool:
    """``path`` is a dep, or lies in a folder that is."""
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def code_deps(deps: set[str]) -> set[str]:
    return {d for d in deps if d.split("/")[0] in PACKAGES}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_project_file_a_stage_loads_is_among_its_deps(stage):
    cmd, deps = STAGES[stage]
    module = stage_module(cmd)
    start = module_file(module)
    loaded = static_closure(start) | runtime_files(module)
    missing = sorted(f for f in loaded if not covered(f, deps))
    assert not missing, (f"stage {stage} loads {missing} but dvc.yaml does not list them (or their package) as "
                         "deps: an edit there would not rerun it")


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_stage_depends_on_no_project_code_it_does_not_load(stage):
    """The reverse: a code dep the stage never loads reruns it for nothing."""
    cmd, deps = STAGES[stage]
    module = stage_module(cmd)
    loaded = static_closure(module_file(module)) | runtime_files(module)
    extra = sorted(d for d in code_deps(deps) if not any(covered(f, {d}) for f in loaded))
    assert not extra, f"stage {stage} depends on {extra}, which it never loads"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_recipe_is_listed_by_package(stage):
    """A package, not its modules: a stage depends on the layers it loads (tests/test_layers.py)."""
    _, deps = STAGES[stage]
    by_module = sorted(d for d in code_deps(deps) if d.startswith("recipe/") and d != "recipe/__init__.py"
                       and d.count("/") != 1)
    assert not by_module, f"stage {stage} lists modules {by_module}: list their package (recipe/<package>)"


def test_a_package_dep_covers_every_file_in_it():
    """What a directory dep means to DVC (every file under it) is what the coverage check assumes."""
    assert covered("recipe/train/fit.py", {"recipe/train"}) and not covered("recipe/training.py", {"recipe/train"})


def test_the_static_scan_finds_a_lazy_import(tmp_path):
    """A function-level import is what sys.modules alone would miss: the scan must see it."""
    assert "recipe/track/tracking.py" in imported_by("recipe/ship/predict.py")  # imported inside predict.load()


def test_each_per_fold_stage_has_its_main_stages_code_deps_and_params(tmp_path):
    """The per-fold stages (only in the index with cv.folds >= 2) run the main stages' modules:
    the same code deps and the same params, or an edit would rerun one and not the other."""
    import shutil

    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    from recipe.core.compose import compose

    for name in ("dvc.yaml", ".dvc/config"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    shutil.copytree(REPO / "hydra_plugins", tmp_path / "hydra_plugins")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    compose(tmp_path, ["cv.folds=2", "cv.stages=resize"], tmp_path / "params.yaml")
    with Repo(str(tmp_path), uninitialized=True) as repo:
        stages = {s.name: s for s in repo.index.stages}
    code = {n: {Path(d.def_path).as_posix() for d in s.deps if Path(d.def_path).parts[0] in PACKAGES}
            for n, s in stages.items()}
    params = {n: sorted(k for d in s.deps if isinstance(d, ParamsDependency) for k in (d.params or []))
              for n, s in stages.items()}
    for main in ("lr_find", "train_head", "finetune", "resize"):
        for fold in (0, 1):
            name = f"cv_{main}@{fold}"
            assert name in stages, sorted(stages)
            assert code[name] == code[main], f"{name}: code deps differ from {main}'s"
            assert params[name] == params[main], f"{name}: params differ from {main}'s"
            assert f"--stage {name} " in stages[name].cmd and f"splits/{fold}.csv" in stages[name].cmd
    assert not any(s.startswith("cv_") and "@" in s for s in STAGES)  # off by default: no per-fold stage
