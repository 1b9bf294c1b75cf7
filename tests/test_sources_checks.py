"""The CSV source's checks of its settings (recipe/data/sources.py list_csv): a wrong
``data.image_dir``, ``data.labels_file`` or ``data.label_col`` is a one-line ConfigError that
names the setting, before anything is listed or copied."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import noise_image
from recipe.core.errors import ConfigError
from recipe.data.sources import ingest, list_csv

SETTINGS = {"labels_file": "labels.csv", "image_dir": "train", "fname_col": "name", "label_col": "label",
            "suffix": ".png", "task": "single_label", "label_delim": " "}


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A fast.ai-style CSV dataset: ``train/img<i>.png`` and ``labels.csv`` (name, label)."""
    root = tmp_path / "ds"
    for i in range(3):
        noise_image(root / "train" / f"img{i}.png", i)
    (root / "labels.csv").write_text("name,label\nimg0,x\nimg1,y\nimg2,x\n")
    return root


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_the_settings_as_given_list_every_image(dataset):
    """The baseline the failures below differ from by one setting each."""
    listing = list_csv(path=str(dataset), **SETTINGS)
    assert [(r["path"], r["label"], r["ingest_issue"]) for r in listing.rows] == \
        [("img0.png", "x", ""), ("img1.png", "y", ""), ("img2.png", "x", "")]
    assert listing.classes == ["x", "y"]


@pytest.mark.parametrize("image_dir", ["valid", "labels.csv"])  # missing; a file, not a folder
def test_an_image_dir_that_is_not_a_folder_is_a_config_error(dataset, image_dir):
    with pytest.raises(ConfigError) as exc:
        list_csv(path=str(dataset), **{**SETTINGS, "image_dir": image_dir})
    assert one_line(exc) == f"data.image_dir = {str(dataset / image_dir)!r}: not a directory"


@pytest.mark.parametrize("labels_file", ["train.csv", "train"])  # missing; a folder, not a file
def test_a_labels_file_that_is_not_a_file_is_a_config_error(dataset, labels_file):
    with pytest.raises(ConfigError) as exc:
        list_csv(path=str(dataset), **{**SETTINGS, "labels_file": labels_file})
    assert one_line(exc) == f"data.labels_file = {labels_file!r}: no such file in {dataset}"


def test_a_label_column_the_labels_file_lacks_is_a_config_error(dataset):
    with pytest.raises(ConfigError) as exc:
        list_csv(path=str(dataset), **{**SETTINGS, "label_col": "class"})
    assert one_line(exc) == "data.label_col = 'class': no such column in labels.csv (columns: name, label)"


def test_ingest_stops_at_the_check_before_writing_anything(dataset, tmp_path):
    out = tmp_path / "raw"
    with pytest.raises(ConfigError, match=r"^data\.label_col = 'class': no such column"):
        ingest(source="csv", out=out, seed=0, limit=None, path=str(dataset), **{**SETTINGS, "label_col": "class"})
    assert not out.exists()
