"""Ingest: each source lands in the same data/raw layout; nothing is dropped without a record."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from conftest import image_folder, noise_image
from recipe.core.errors import ConfigError, DataError
from recipe.data.sources import ingest


def read_index(out):
    return pd.read_csv(out / "index.csv", keep_default_na=False)


def test_folder_source_copies_images_and_records_every_entry(tmp_path):
    src = image_folder(tmp_path / "src", {"cat": 3, "dog": 2})
    (src / "empty_class").mkdir()
    noise_image(src / "stray.png", 99)  # at the root: no class folder
    outside = noise_image(tmp_path / "secret" / "x.png", 7)
    os.symlink(outside, src / "cat" / "escape.png")
    os.symlink(src / "dog" / "dog_000.png", src / "cat" / "inside_link.png")
    summary = ingest(source="folder", task="single_label", out=tmp_path / "raw", seed=0, limit=None, path=str(src))
    index = read_index(tmp_path / "raw").set_index("path")
    assert index.loc["cat/escape.png", "ingest_issue"] == "path_outside_root"
    assert index.loc["cat/escape.png", "origin"] == "cat/escape.png"  # where the link was named
    assert index["origin"].tolist() == index.index.tolist()  # relative to data.path: no machine path
    assert not (tmp_path / "raw" / "files" / "cat" / "escape.png").exists()  # never followed
    assert index.loc["stray.png", "ingest_issue"] == "no_label"
    assert index.loc["cat/inside_link.png", "ingest_issue"] == ""  # a link inside the root is fine
    assert (tmp_path / "raw" / "files" / "cat" / "inside_link.png").read_bytes() == (src / "dog" / "dog_000.png").read_bytes()
    assert (index["label"] == "cat").sum() == 5 and (index["label"] == "dog").sum() == 2
    assert summary["classes"] == ["cat", "dog", "empty_class"]
    assert json.loads((tmp_path / "raw" / "ingest.json").read_text())["ingest_issues"] == {"no_label": 1, "path_outside_root": 1}


def test_sync_copies_only_what_changed_and_removes_what_left(tmp_path):
    src = image_folder(tmp_path / "src", {"a": 3, "b": 3})
    out = tmp_path / "raw"
    ingest(source="folder", task="single_label", out=out, seed=0, limit=None, path=str(src))
    kept = out / "files" / "a" / "a_000.png"
    before = kept.stat().st_ino, kept.stat().st_mtime_ns
    (src / "b" / "b_002.png").unlink()
    noise_image(src / "a" / "a_001.png", 12345)  # changed content
    ingest(source="folder", task="single_label", out=out, seed=0, limit=None, path=str(src))
    assert (kept.stat().st_ino, kept.stat().st_mtime_ns) == before
    assert not (out / "files" / "b" / "b_002.png").exists()
    assert (out / "files" / "a" / "a_001.png").read_bytes() == (src / "a" / "a_001.png").read_bytes()


def test_csv_source_fastai_layout(tmp_path):
    root = tmp_path / "ds"
    for i in range(4):
        noise_image(root / "train" / f"img{i}.png", i)
    noise_image(tmp_path / "outside.png", 50)
    (root / "labels.csv").write_text(
        "name,label,site\nimg0,x,A\nimg1,y,B\nimg2,x,A\nghost,y,B\n../../outside,x,A\n", encoding="utf-8"
    )
    ingest(source="csv", task="single_label", label_delim=" ",
           out=tmp_path / "raw", seed=0, limit=None, path=str(root), labels_file="labels.csv",
           image_dir="train", fname_col="name", label_col="label", suffix=".png")
    index = read_index(tmp_path / "raw").set_index("path")
    assert index.loc["img1.png", "label"] == "y" and index.loc["img1.png", "site"] == "B"
    assert index.loc["img1.png", "origin"] == "train/img1.png"  # relative to data.path
    assert index.loc["img3.png", "origin"] == "train/img3.png"
    assert str(tmp_path) not in (tmp_path / "raw" / "index.csv").read_text()
    assert index.loc["ghost.png", "ingest_issue"] == "missing_file"
    assert index.loc["../../outside.png", "ingest_issue"] == "path_outside_root"
    assert index.loc["img3.png", "ingest_issue"] == "no_label"  # in the folder, not in the csv
    assert sorted(p.name for p in (tmp_path / "raw" / "files").iterdir()) == ["img0.png", "img1.png", "img2.png"]


def test_csv_source_names_a_wrong_column(tmp_path):
    root = tmp_path / "ds"
    (root / "train").mkdir(parents=True)
    (root / "labels.csv").write_text("file,class\n")
    with pytest.raises(ConfigError, match=r"data.fname_col = 'name': no such column in labels.csv \(columns: file, class\)"):
        ingest(source="csv", task="single_label", label_delim=" ",
               out=tmp_path / "raw", seed=0, limit=None, path=str(root), labels_file="labels.csv",
               image_dir="train", fname_col="name", label_col="class", suffix="")


def test_folder_source_requires_a_directory(tmp_path):
    with pytest.raises(ConfigError, match="data.path = .*: not a directory"):
        ingest(source="folder", task="single_label", out=tmp_path / "raw", seed=0, limit=None, path=str(tmp_path / "nope"))


@pytest.mark.parametrize("task, expected", [
    ("binary", {"functional": 1508 + 295, "defective": 106 + 715}),
    ("four_class", {"functional": 1508, "possibly_defective": 295, "likely_defective": 106, "defective": 715}),
])
def test_elpv_labels(tmp_path, task, expected):
    summary = ingest(source="elpv", out=tmp_path / "raw", seed=0, task=task, limit=40)
    assert summary["entries"] == 2624 and summary["classes"] == sorted(expected)
    index = read_index(tmp_path / "raw")
    assert len(index) == 40 and set(index["module_type"]) <= {"mono", "poly"}
    assert (index["origin"] == "elpv-dataset:" + index["path"]).all()  # not the site-packages path
    counts = index["label"].value_counts()
    for label, n in expected.items():  # the subset keeps each class's share (largest remainder)
        assert abs(counts[label] - 40 * n / 2624) < 1
    assert len(list((tmp_path / "raw" / "files" / "images").iterdir())) == 40


def test_a_source_with_nothing_usable_stops_after_writing_its_index(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    os.symlink("/etc/hostname", src / "a" / "x.png")
    with pytest.raises(DataError, match=r"ingest: the source holds no image that could be copied \(1 entries"):
        ingest(source="folder", task="single_label", out=tmp_path / "raw", seed=0, limit=None, path=str(src))
    assert read_index(tmp_path / "raw")["ingest_issue"].tolist() == ["path_outside_root"]
