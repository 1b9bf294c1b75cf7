"""recipe.steps on a few tiny images: what a training stage writes into its checkpoint."""
from __future__ import annotations

import copy

import pandas as pd
import torch

from conftest import noise_image
from recipe.config import load_section
from recipe.schema import FinetuneConfig, LrFindConfig
from recipe.session import load_checkpoint, new_model, save_checkpoint
from recipe.steps import finetune
from stages._common import common_config


def test_finetune_keeps_the_model_config_of_the_checkpoint_it_loaded(tmp_path, params):
    """The checkpoint has an avgmax head while params.yaml says avg: finetune's checkpoint must
    describe the model it trained (it once wrote params.yaml's model section, which did not load)."""
    rows = []
    for i in range(12):
        noise_image(tmp_path / "raw" / "files" / f"{i}.png", i, size=32)
        rows.append({"path": f"{i}.png", "label": "ab"[i % 2], "split": "train" if i < 8 else "valid"})
    pd.DataFrame(rows).to_csv(tmp_path / "split.csv", index=False)
    p = copy.deepcopy(params)
    p["model"] = {**p["model"], "name": "resnet18", "weights": None}
    p["train"] = {**p["train"], "size": 32, "batch_size": 4, "workers": 1}
    p["finetune"] = {**p["finetune"], "epochs": 1}
    loaded = copy.deepcopy(p["model"])
    loaded["head"] = {**loaded["head"], "pool": "avgmax"}
    common = common_config(p)
    start = new_model(common_config({**p, "model": loaded}).model, ["a", "b"], [0.5, 0.5])
    save_checkpoint(tmp_path / "head.pt", start, classes=["a", "b"], size=32, model_config=loaded,
                    stage="train_head", epoch=1, channels=1)
    finetune(common, load_section("finetune", FinetuneConfig, p), load_section("lr_find", LrFindConfig, p),
             split=tmp_path / "split.csv", raw=tmp_path / "raw", checkpoint=tmp_path / "head.pt",
             out=tmp_path / "ft" / "model.pt", history_csv=tmp_path / "ft" / "history.csv", lr_find_dir=tmp_path / "lr")
    model, meta = load_checkpoint(tmp_path / "ft" / "model.pt")
    assert meta["model_config"]["head"]["pool"] == "avgmax"
    assert model.head.fc.in_features == 2 * 512
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 2)
