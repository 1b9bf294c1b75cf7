"""`dvc exp run <stage>` in a fresh clone (an empty DVC cache), the recipe's "look at the data
first" step: after the stages it runs, DVC lists the top-level plots' files to stage them
(BaseExecutor._get_top_level_paths -> Index._plot_sources -> dvcfs.isdir on each path). A path
*inside* a directory output that did not run needs that directory's .dir object from the cache,
and the experiment failed ("failed to load directory"). So top-level plots name directory
outputs, never files inside them."""
from __future__ import annotations

import pytest
from dvc.repo import Repo
from dvc.repo.experiments.executor.base import BaseExecutor

from conftest import copy_project, run_cmd


def test_top_level_plots_resolve_without_the_cache(tmp_path):
    proj = copy_project(tmp_path / "proj")  # dvc.lock's hashes, none of them in this copy's cache
    with Repo(str(proj)) as repo:
        dirs = [str(o) for o in repo.index.outs if o.hash_info and o.hash_info.isdir]
        assert dirs, "dvc.lock names no directory output: the test checks nothing"
        BaseExecutor._get_top_level_paths(repo)  # raised DataIndexDirError for a file in a dir output


@pytest.mark.slow
@pytest.mark.parametrize("target", ["audit", "split"])
def test_a_partial_experiment_in_a_fresh_clone(tmp_path, target):
    proj = copy_project(tmp_path / "proj")
    run_cmd("git", "add", "-A", cwd=proj)
    run_cmd("git", "commit", "-qm", "clone", cwd=proj)
    out = run_cmd("dvc", "exp", "run", "-S", "experiment=tiny", target, cwd=proj)
    assert f"Running stage '{target}'" in out and "Running stage 'evaluate'" not in out
