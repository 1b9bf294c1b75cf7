"""Outputs do not depend on where the checkout lives: a teammate who clones the project, with its
own virtualenv, and `dvc pull`s every output reruns nothing (the always-changed stages run, and
give the same hashes), and no output names a machine path."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cmd, subprocess_env

pytestmark = pytest.mark.slow

ALWAYS_CHANGED = {"ingest", "record"}  # always_changed in dvc.yaml: they run on every repro


def own_venv(parent: Path) -> tuple[str, dict]:
    """A per-checkout virtualenv path (a link to the one running the tests): the interpreter and
    a shell environment with it first on PATH, so the ELPV package lives under ``parent``."""
    venv = parent / "venv"
    venv.symlink_to(sys.prefix, target_is_directory=True)
    env = subprocess_env(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    return str(venv / "bin" / "python"), env


def stage_outcomes(log: str) -> dict[str, str]:
    """Each stage's fate in a `dvc repro` log: ran, cached (restored from the run cache) or skipped."""
    fate = {}
    for pattern, what in ((r"Running stage '([^']+)'", "ran"), (r"Stage '([^']+)' is cached", "cached"),
                          (r"Stage '([^']+)' didn't change", "skipped")):
        fate.update({name: what for name in re.findall(pattern, log)})
    return fate


def leaked_paths(proj: Path, needles: list[str]) -> dict[str, list[str]]:
    """Output files (data/raw index and summary, outputs/**/*.csv|json, dvc.lock) naming a needle."""
    files = [proj / "data/raw/index.csv", proj / "data/raw/ingest.json", proj / "dvc.lock",
             *(proj / "outputs").rglob("*.csv"), *(proj / "outputs").rglob("*.json")]
    found = {}
    for f in files:
        text = f.read_text(errors="replace")
        hits = [n for n in needles if n in text]
        if hits:
            found[str(f.relative_to(proj))] = hits
    return found


def test_a_pulled_clone_elsewhere_reruns_nothing(tiny_project, tmp_path):
    # The first checkout: the session's tiny project (built where it lives, by the interpreter that
    # runs the tests), copied here so it stays read-only for the other tests.
    first = tmp_path / "first" / "proj"
    shutil.copytree(tiny_project, first, symlinks=True)
    python, env = sys.executable, subprocess_env()
    run_cmd(python, "-m", "dvc", "remote", "add", "-d", "local", str(tmp_path / "remote"), cwd=first, env=env)
    run_cmd("git", "commit", "-qam", "remote", cwd=first, env=env)
    run_cmd(python, "-m", "dvc", "push", cwd=first, env=env)

    second_parent = tmp_path / "a_teammate_with_a_longer_home"
    second_parent.mkdir()
    python2, env2 = own_venv(second_parent)
    run_cmd("git", "clone", "-q", str(first), str(second_parent / "clone"), cwd=tmp_path, env=env2)
    clone = second_parent / "clone"
    run_cmd(python2, "-m", "dvc", "pull", cwd=clone, env=env2)
    log = run_cmd(python2, "-m", "dvc", "repro", cwd=clone, env=env2)

    from dvc.repo import Repo

    with Repo(str(clone)) as repo:  # the stages as DVC resolves them (a foreach group over no folds is none)
        stages = {s.name for s in repo.index.stages}
    fate = stage_outcomes(log)
    reran = sorted(s for s in stages - ALWAYS_CHANGED if fate.get(s) != "skipped")
    said = ", ".join(f"{s} ({fate.get(s, 'not reported')})" for s in reran)
    assert not reran, f"stages reran in the clone: {said}\n{log}"
    assert {s for s, what in fate.items() if what == "ran"} <= ALWAYS_CHANGED, log
    diff = subprocess.run(["git", "diff", "--", "dvc.lock"], cwd=clone, capture_output=True, text=True, check=True).stdout
    assert not diff, f"the clone's repro changed dvc.lock:\n{diff}"

    for proj, (built_at, venv) in ((first, (tiny_project, Path(sys.prefix))), (clone, (clone, second_parent / "venv"))):
        needles = sorted({str(built_at), os.path.realpath(built_at), str(venv), os.path.realpath(venv), "site-packages"})
        assert not leaked_paths(proj, needles), f"outputs of {proj} name a machine path: {leaked_paths(proj, needles)}"
