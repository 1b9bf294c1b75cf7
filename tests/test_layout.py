"""Each stage folder's file names have one home, recipe/core/layout.py: every out, metric and plot
dvc.yaml declares is one of its stage's names there, and every name there that a stage keeps is
declared (so DVC caches and tracks what the code writes)."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from recipe.core import layout

# dvc.yaml's vars.paths key of each stage's folder
FOLDER = {"ingest": "raw", "audit": "audit", "split": "split", "baseline": "baseline", "lr_find": "lr_find",
          "train_head": "head", "finetune": "finetune", "resize": "resize", "cv": "cv", "select": "select",
          "evaluate": "evaluate", "export": "export"}
# names a stage uses but never leaves for DVC: resume/ is removed when the stage ends, finetune's
# lr_find/ is a picture of an lr: auto run, logged to MLflow; train_head takes no snapshots;
# ema.pt lives in snapshots/; ingest's one output is data/raw itself; cv's folds/ are the per-fold stages' outputs.
NOT_DECLARED = {"train_head": {"resume", "lr_find", "snapshots", "ema"}, "finetune": {"resume", "lr_find", "ema"},
                "resize": {"resume", "lr_find", "ema"}, "ingest": {"files", "index", "summary"}, "cv": {"folds", "fold_splits"}}


def declared() -> dict[str, set[str]]:
    """Each stage's outs, metrics and plots, as names inside its folder (first path component)."""
    from dvc.repo import Repo

    paths = yaml.safe_load((REPO / "dvc.yaml").read_text())["vars"][0]["paths"]
    out: dict[str, set[str]] = {}
    with Repo(str(REPO)) as repo:
        for stage in repo.index.stages:
            if stage.name not in FOLDER:
                continue
            folder = (REPO / paths[FOLDER[stage.name]]).resolve()
            names = set()
            for o in stage.outs:
                rel = Path(o.fs_path).resolve().relative_to(folder)
                names.add(rel.parts[0] if rel.parts else "")
            out[stage.name] = names
    return out


DECLARED = declared()


def test_every_stage_with_a_folder_is_in_the_layout():
    assert set(DECLARED) == set(layout.BY_STAGE) == set(FOLDER)
    assert layout.TRAINING_STAGES == ("train_head", "finetune", "resize")


@pytest.mark.parametrize("stage", sorted(FOLDER))
def test_dvc_yaml_declares_exactly_the_layouts_names(stage):
    names = asdict(layout.BY_STAGE[stage])
    if stage == "ingest":
        assert DECLARED[stage] == {""}  # data/raw as one output
        return
    unknown = DECLARED[stage] - set(names.values())
    assert not unknown, f"dvc.yaml's {stage} declares {sorted(unknown)}, not in recipe/core/layout.py"
    kept = {v for k, v in names.items() if k not in NOT_DECLARED.get(stage, set())}
    assert DECLARED[stage] == kept, f"{stage}: the layout names {sorted(kept - DECLARED[stage])} that dvc.yaml does not declare"


def test_no_module_spells_a_layout_name_in_a_path():
    """The names are written once: no ``folder / "model.pt"`` elsewhere in recipe/ or stages/."""
    names = {v for d in layout.BY_STAGE.values() for v in asdict(d).values() if "." in v}
    bad = []
    for path in sorted([*(REPO / "recipe").rglob("*.py"), *(REPO / "stages").rglob("*.py")]):
        if path.name == "layout.py" or "search" in path.parts:  # the search writes outputs/search/, no stage's folder
            continue
        text = path.read_text(encoding="utf-8")
        for name in names:
            for pattern in (f'/ "{name}"', f'with_name("{name}")'):
                if pattern in text:
                    bad.append(f"{path.relative_to(REPO)}: {pattern}")
    assert not bad, bad
