"""Datasets and requests from others: nothing written outside data/raw, only the allow-listed
decoders read their bytes, bad names flagged and skipped, caps on what one request may cost, and
config values that used to slip through are one-line errors naming the key."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import EpsImagePlugin, Image

from conftest import REPO, noise_image
from recipe.core.config import load_section
from recipe.core.errors import ConfigError, DataError
from recipe.data.audit import audit
from recipe.data.images import FORMATS, ImageRefused, inspect_image
from recipe.data.loader import decode_all
from recipe.data.schema import CvConfig
from recipe.data.sources import ingest, stratified_subset
from recipe.decide.schema import SelectConfig
from recipe.train.schema import TrainConfig

AUDIT = dict(drop_exact_duplicates=True, conflicting_labels="drop", near_dup_bits=0, max_pixels=89_478_485,
             min_side=8, too_small="flag", size_outlier_factor=8.0, size_outliers="flag", min_per_class=1,
             stats_max_side=64, workers=1)
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n%%EOF\n"


def _project_files(proj: Path) -> dict[str, bytes]:
    return {p.relative_to(proj).as_posix(): p.read_bytes() for p in proj.rglob("*")
            if p.is_file() and "data" not in p.relative_to(proj).parts[:1]}


def _hostile_csv_dataset(root: Path) -> Path:
    """A link ``images/link -> a/b/c/d`` and a labels row ``link/../../../../stages/ingest.py``:
    the source resolves inside the dataset (images/stages/ingest.py, the attacker's code), the raw
    name leads from data/raw/files up to the project's own stages/ingest.py."""
    images = root / "images"
    for i in range(4):
        noise_image(images / f"ok{i}.png", i)
    (images / "a" / "b" / "c" / "d").mkdir(parents=True)
    os.symlink("a/b/c/d", images / "link")
    (images / "stages").mkdir()
    (images / "stages" / "ingest.py").write_text("raise SystemExit('the dataset ran its own code')\n")
    rows = [f"ok{i}.png,good" for i in range(4)] + ["link/../../../../stages/ingest.py,good",
                                                     "/etc/hostname,good", "../outside.png,good"]
    (root / "labels.csv").write_text("name,label\n" + "\n".join(rows) + "\n")
    return root


def test_a_hostile_csv_dataset_leaves_every_project_file_unchanged_and_is_flagged(tmp_path):
    proj = tmp_path / "proj"
    (proj / "stages").mkdir(parents=True)
    (proj / "stages" / "ingest.py").write_text("print('the project code')\n")
    (proj / "recipe.py").write_text("x = 1\n")
    noise_image(tmp_path / "outside.png", 9)
    before = _project_files(proj)
    ds = _hostile_csv_dataset(tmp_path / "ds")
    raw = proj / "data" / "raw"
    ingest(source="csv", task="single_label", label_delim=" ",
           out=raw, seed=0, limit=None, path=str(ds), labels_file="labels.csv", image_dir="images",
           fname_col="name", label_col="label", suffix="")
    assert _project_files(proj) == before
    index = pd.read_csv(raw / "index.csv", keep_default_na=False).set_index("path")
    for name in ("link/../../../../stages/ingest.py", "/etc/hostname", "../outside.png"):
        assert index.loc[name, "ingest_issue"] == "path_outside_root", name
    assert sorted(p.relative_to(raw / "files").as_posix() for p in (raw / "files").rglob("*") if p.is_file()) == \
        [f"ok{i}.png" for i in range(4)]
    manifest, report = audit(raw=raw, **AUDIT)
    flagged = manifest.set_index("path").loc["link/../../../../stages/ingest.py"]
    assert flagged["issues"] == "path_outside_root" and not flagged["keep"]
    assert report["issues"]["path_outside_root"] == 3


def test_the_copy_never_writes_through_a_link_left_in_data_raw(tmp_path):
    src = tmp_path / "src"
    noise_image(src / "cat" / "a.png", 1)
    noise_image(src / "cat" / "b.png", 2)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    files = tmp_path / "raw" / "files"
    (files / "cat").mkdir(parents=True)
    os.symlink(victim, files / "cat" / "a.png")  # planted where a copy will land
    ingest(source="folder", task="single_label", out=tmp_path / "raw", seed=0, limit=None, path=str(src))
    assert victim.read_text() == "keep me"
    assert not (files / "cat" / "a.png").is_symlink()
    assert (files / "cat" / "a.png").read_bytes() == (src / "cat" / "a.png").read_bytes()


def _spy_on_eps(monkeypatch) -> list:
    calls = []
    real = EpsImagePlugin.EpsImageFile._open

    def spy(self):
        calls.append(1)
        return real(self)

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", spy)
    return calls


def test_an_eps_file_named_png_is_not_an_image_and_no_other_decoder_reads_it(tmp_path, monkeypatch):
    calls = _spy_on_eps(monkeypatch)
    fake = tmp_path / "x.png"
    fake.write_bytes(EPS)
    info = inspect_image(fake, max_pixels=10**6, stats_max_side=64)
    assert info.issue == "not_image" and info.detail == f"not_image: not one of {', '.join(FORMATS)}"
    from recipe.ship.predict import decode

    for source in (fake, EPS):  # a file for predict, bytes for the served model
        with pytest.raises(ImageRefused, match="not one of PNG, JPEG"):
            decode(source)
    assert calls == []
    Image.open(io.BytesIO(EPS)).close()  # the spy sees what an open with every decoder does
    assert calls == [1]


def test_a_name_that_is_not_utf8_is_flagged_and_the_rest_ingested(tmp_path):
    src = tmp_path / "src"
    noise_image(src / "cat" / "a.png", 1)
    noise_image(src / "dog" / "b.png", 2)
    bad = os.path.join(os.fsencode(src / "cat"), b"caf\xe9.png")
    with open(bad, "wb") as f:
        f.write((src / "cat" / "a.png").read_bytes())
    os.mkdir(os.path.join(os.fsencode(src), b"bad\xff"))
    with open(os.path.join(os.fsencode(src), b"bad\xff", b"c.png"), "wb") as f:
        f.write((src / "cat" / "a.png").read_bytes())
    summary = ingest(source="folder", task="single_label", out=tmp_path / "raw", seed=0, limit=None, path=str(src))
    index = pd.read_csv(tmp_path / "raw" / "index.csv", keep_default_na=False).set_index("path")
    assert index.loc["cat/caf\\xe9.png", "ingest_issue"] == "bad_name"
    assert index.loc["bad\\xff/c.png", "ingest_issue"] == "bad_name"
    assert index.loc["bad\\xff/c.png", "label"] == "bad\\xff"
    assert index.loc[["cat/a.png", "dog/b.png"], "ingest_issue"].tolist() == ["", ""]
    assert summary["classes"] == ["cat", "dog"] and summary["ingest_issues"] == {"bad_name": 2}
    assert sorted(p.name for p in (tmp_path / "raw" / "files").rglob("*.png")) == ["a.png", "b.png"]
    manifest, _ = audit(raw=tmp_path / "raw", **AUDIT)
    assert manifest.set_index("path").loc["cat/caf\\xe9.png", "issues"] == "bad_name"


def test_formula_like_names_are_counted_and_said_but_kept_as_given(tmp_path, capsys):
    ds = tmp_path / "ds"
    for i in range(3):
        noise_image(ds / "images" / f"{i}.png", i)
    (ds / "labels.csv").write_text('name,label\n0.png,"=HYPERLINK(""http://x"",""y"")"\n1.png,@cmd\n2.png,plain\n')
    summary = ingest(source="csv", task="single_label", label_delim=" ",
                     out=tmp_path / "raw", seed=0, limit=None, path=str(ds), labels_file="labels.csv",
                     image_dir="images", fname_col="name", label_col="label", suffix="")
    assert summary["formula_like_names"] == 2
    assert "2 label(s) or file name(s) start with = + - @" in capsys.readouterr().out
    index = pd.read_csv(tmp_path / "raw" / "index.csv", keep_default_na=False)
    assert index["label"].tolist() == ['=HYPERLINK("http://x","y")', "@cmd", "plain"]  # the classes as given


def test_plain_names_add_no_key_to_ingest_json(tmp_path):
    src = tmp_path / "src"
    noise_image(src / "cat" / "a.png", 1)
    noise_image(src / "dog" / "b.png", 2)
    summary = ingest(source="folder", task="single_label", out=tmp_path / "raw", seed=0, limit=None, path=str(src))
    assert "formula_like_names" not in summary  # ELPV's ingest.json keeps its bytes


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10])
def test_stratified_subset_never_returns_more_rows_than_asked(n):
    rows = [{"label": "big", "i": i} for i in range(991)] + [{"label": f"c{k}", "i": k} for k in range(9)]
    assert len(stratified_subset(rows, 10, seed=0)) == 10  # nine labels of one image and a large one
    if n < 10:
        with pytest.raises(ConfigError, match=f"data.limit = {n}: below the number of classes \\(10\\)"):
            stratified_subset(rows, n, seed=0)
    else:
        chosen = stratified_subset(rows, n, seed=0)
        assert len(chosen) == n and len({r["label"] for r in chosen}) == 10


def test_the_loader_decodes_no_file_at_more_pixels_than_the_audit_measured(tmp_path):
    f = noise_image(tmp_path / "a.png", 1, size=48)
    assert decode_all([f], size=16, max_pixels=[48 * 48]).shape == (1, 1, 16, 16)
    with pytest.raises(DataError, match="a.png: cannot decode .*2304 pixels > max_pixels 2303"):
        decode_all([f], size=16, max_pixels=[48 * 48 - 1])


@pytest.mark.parametrize("section, schema, key, value, message", [
    ("train", TrainConfig, "batch_size", True, "train.batch_size = True"),
    ("train", TrainConfig, "batch_size", "32", "train.batch_size = '32'"),
    ("select", SelectConfig, "tolerance", float("inf"), "select.tolerance = inf"),
    ("cv", CvConfig, "folds", 100, "cv.folds = 100"),
])
def test_values_that_used_to_slip_through_are_one_line_errors(params, section, schema, key, value, message):
    params[section][key] = value
    with pytest.raises(ConfigError) as err:
        load_section(section, schema, params)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_cv_folds_100_stops_the_composition_before_dvc_sees_300_stages(tmp_path):
    from recipe.core.compose import compose

    with pytest.raises(Exception) as err:
        compose(REPO, ["cv.folds=100"], tmp_path / "params.yaml")
    assert "cv.folds = 100: an integer from 0 (off) to 20" in str(err.value)
    assert not (tmp_path / "params.yaml").exists()


@pytest.fixture
def served_model(tmp_path):
    """evaluate's pyfunc model, loaded as MLflow loads it: the bundle and the model_config."""
    from mlflow.pyfunc import PythonModelContext
    from test_predict import make_checkpoint

    from recipe.decide.ensemble import save_bundle
    from recipe.ship.pyfunc_model import RecipeModel

    ckpt = make_checkpoint(tmp_path)
    spec = {"name": "none", "scales": [1.0], "crop": 0.875, "n": 1, "beta": None, "augment": None}
    bundle = save_bundle(tmp_path / "bundle.pt", [("resize", ckpt)], views=spec, threshold=None, seed=0, info={})
    model = RecipeModel()
    model.load_context(PythonModelContext(artifacts={"bundle": str(bundle)},
                                          model_config={"max_pixels": 64 * 64, "max_rows": 2}))
    return model


def _png(size: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), 128, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_the_served_model_caps_rows_per_request_and_pixels_per_image(served_model):
    from mlflow.exceptions import MlflowException

    ok = served_model.predict(None, pd.DataFrame({"image": [_png(64), _png(32)]}))
    assert list(ok["predicted"].isin(["crack", "fine"])) == [True, True]
    with pytest.raises(MlflowException, match=r"3 images in one request; this model takes at most 2 "
                                              r"\(evaluate.model.max_rows\)"):
        served_model.predict(None, pd.DataFrame({"image": [_png(32)] * 3}))
    with pytest.raises(MlflowException, match=r"image 1: cannot read as an image \(decompression_bomb: 65x65 = "
                                              r"4225 pixels > max_pixels 4096\)"):
        served_model.predict(None, pd.DataFrame({"image": [_png(32), _png(65)]}))
