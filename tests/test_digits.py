"""The second dataset end to end: scikit-learn's digits (8x8 px, ten classes) through the real
`dvc repro`, pointed at with data=folder and a path only; the tiny experiment keeps it short."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import copy_project, run_cmd
from recipe.core.compose import compose
from recipe.data.digits import main as digits_main
from recipe.data.digits import write_digits

pytestmark = pytest.mark.slow


def test_digits_script_writes_an_image_folder_and_refuses_a_full_folder(tmp_path, capsys):
    from PIL import Image

    assert write_digits(tmp_path / "d", limit=30) == 30
    files = sorted((tmp_path / "d").rglob("*.png"))
    assert len(files) == 30 and {f.parent.name for f in files} == {str(i) for i in range(10)}
    im = Image.open(files[0])
    assert im.size == (8, 8) and im.mode == "L"
    assert digits_main([str(tmp_path / "d")]) == 2 and "not empty" in capsys.readouterr().err


def test_digits_through_the_pipeline_with_the_data_path_only(tmp_path):
    data = tmp_path / "digits"
    write_digits(data, limit=200)
    proj = copy_project(tmp_path / "proj")
    # the tiny experiment's short epochs at 64 px; its fixed resize size put back to conf/'s auto
    compose(proj, ["experiment=tiny", "data=folder", f"data.path={data}", "data.limit=null", "resize.image_size=auto"],
            proj / "params.yaml")
    params = yaml.safe_load((proj / "params.yaml").read_text())
    assert params["augment"]["flip_h"] == 0 and not params["augment"]["rot90"]  # folder data: no flips or turns
    run_cmd("git", "add", "-A", cwd=proj)
    run_cmd("git", "commit", "-qm", "digits", cwd=proj)
    out = run_cmd("python", "-m", "dvc", "repro", cwd=proj)
    assert "resize: size auto: the images' median shorter side (8 px) is no larger than 64 px" in out
    report = json.loads((proj / "outputs/audit/report.json").read_text())
    assert report["kept"] == 200  # 8 px images are not too small
    head = torch.load(proj / "outputs/train_head/model.pt", weights_only=True)
    assert head["size"] == 64
    resize = json.loads((proj / "outputs/resize/metrics.json").read_text())
    assert resize["passed_on"].startswith("size auto") and resize["size"] == 64 and resize["epochs"] == 0
    # augment none (folder data): no mirrored views either, select.trained_views_only
    assert "select: view set 'flip_h' left out: training never showed flip_h" in out
    assert set(pd.read_csv(proj / "outputs/select/candidates.csv")["views"]) == {"none"}
    sel = json.loads((proj / "outputs/select/metrics.json").read_text())
    assert sel["chosen"]["threshold"] is None and sel["chosen"]["size"] == 64  # ten classes: no threshold
    m = json.loads((proj / "outputs/evaluate/metrics.json").read_text())
    assert m["test_chosen"]["accuracy"] > 2 * m["table"]["majority_class"]["test_accuracy"]
    assert len(pd.read_csv(proj / "outputs/evaluate/predictions.csv")) == m["test"]["images"]


def test_long_tailed_digits_keep_about_180_times_r_to_the_k(tmp_path):
    from sklearn.datasets import load_digits

    from recipe.data.digits import long_tail_rows, write_digits

    _, y = load_digits(return_X_y=True)
    counts = np.bincount(y[long_tail_rows(y, 0.75)])
    expected = [min(int((y == k).sum()), round(180 * 0.75 ** k)) for k in range(10)]
    assert counts.tolist() == expected and counts[9] == 14
    assert (long_tail_rows(y, 0.75) == long_tail_rows(y, 0.75)).all()  # seeded
    n = write_digits(tmp_path / "lt", long_tail=0.75)
    assert n == sum(expected) and len(list((tmp_path / "lt" / "9").glob("*.png"))) == 14
