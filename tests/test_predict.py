"""The predict command on a user's own files, and the model logged to MLflow by evaluate."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from recipe.decide import tta as T
from recipe.ship.predict import load, main, prepare
from recipe.train.models import build_model
from recipe.train.session import save_checkpoint
from tests.conftest import REPO, noise_image, subprocess_env

CFG = {"name": "resnet18", "weights": None, "mean": [0.5] * 3, "std": [0.25] * 3,
       "head": {"pool": "avg", "dropout": 0.0, "init": "kaiming", "init_gain": 1.0, "prior_bias": False}}
CLASSES = ["crack", "fine"]


@pytest.fixture
def checkpoint(tmp_path):
    return make_checkpoint(tmp_path)


def make_checkpoint(tmp_path: Path) -> Path:
    """An untrained ResNet-18 checkpoint at 32 px, one channel, classes crack and fine."""
    torch.manual_seed(0)
    h = CFG["head"]
    m = build_model(name=CFG["name"], weights=None, mean=CFG["mean"], std=CFG["std"], classes=2, pool=h["pool"],
                    dropout=h["dropout"], init=h["init"], init_gain=h["init_gain"]).eval()
    return save_checkpoint(tmp_path / "model.pt", m, classes=CLASSES, size=32, model_config=CFG, stage="resize",
                           epoch=1, channels=1)


@pytest.fixture
def images(tmp_path):
    return make_images(tmp_path)


def make_images(tmp_path: Path) -> tuple[Path, Path]:
    """A grayscale PNG (48 px) and an RGB JPEG (80x64)."""
    png = noise_image(tmp_path / "cell.png", 1, size=48, mode="L")
    jpg = tmp_path / "photo.jpg"
    Image.open(noise_image(tmp_path / "rgb.png", 2, size=64, mode="RGB")).resize((80, 64)).save(jpg, quality=90)
    return png, jpg


def _lines(out: str) -> list[list[str]]:
    return [line.split("\t") for line in out.strip().splitlines()]


def test_predict_command_on_a_png_and_a_jpeg(checkpoint, images, capsys):
    assert main([*map(str, images), "--model", str(checkpoint)]) == 0
    rows = _lines(capsys.readouterr().out)
    assert [r[0] for r in rows] == [str(p) for p in images]
    predictor = load(str(checkpoint))
    assert predictor.size == 32 and predictor.channels == 1 and predictor.threshold is None
    x = torch.from_numpy(prepare(list(images), 32, 1))
    assert x.shape == (2, 1, 32, 32) and 0 <= x.min() and x.max() <= 1  # the JPEG (RGB, 80x64) made gray, square
    with torch.no_grad():
        probs = predictor(x)
    for row, p in zip(rows, probs):
        assert row[1] == CLASSES[int(p.argmax())]
        assert float(row[2]) == pytest.approx(float(p.max()), abs=1e-4)


def test_predict_with_other_views_and_top_classes(checkpoint, images, capsys):
    assert main([str(images[0]), "--model", str(checkpoint), "--views", "dihedral", "--top", "2"]) == 0
    (row,) = _lines(capsys.readouterr().out)
    assert sorted([row[1], row[3]]) == CLASSES
    assert float(row[2]) + float(row[4]) == pytest.approx(1.0, abs=2e-4)
    predictor = load(str(checkpoint))
    x = torch.from_numpy(prepare([images[0]], 32, 1))
    views = T.tta_views("dihedral", scales=(), crop=0.875, n=1, beta=None, augment=None, seed=0)
    expected = T.predict(predictor.members[0], [(x, torch.zeros(1, dtype=torch.long))], views)["tta"][0]
    assert float(row[2]) == pytest.approx(float(expected.max()), abs=1e-4)


def test_a_bundle_predicts_with_its_views_and_threshold(checkpoint, images, tmp_path, capsys):
    """select's bundle: every member, its view set and its threshold are what predict applies."""
    from recipe.decide.ensemble import load_bundle, save_bundle

    spec = {"name": "flips", "scales": [1.0], "crop": 0.875, "n": 1, "beta": None, "augment": None}
    x = torch.from_numpy(prepare([images[0]], 32, 1))
    one = load(str(checkpoint))
    views = T.tta_views("flips", scales=(), crop=0.875, n=1, beta=None, augment=None, seed=0)
    expected = T.predict(one.members[0], [(x, torch.zeros(1, dtype=torch.long))], views)["tta"][0]
    # a threshold on the other side of p(fine) from 0.5, halfway to 0 or 1: it decides the class
    # the argmax does not
    argmax = int(expected.argmax())
    threshold = (float(expected[1]) + (1.0 if argmax == 1 else 0.0)) / 2
    decided = CLASSES[1 - argmax]
    bundle = save_bundle(tmp_path / "bundle.pt", [("resize", checkpoint), ("resize@1", checkpoint)],
                         views=spec, threshold=threshold, seed=0, info={"candidate": "resize+resize@1"})
    model, meta = load_bundle(bundle)
    assert model.names == ["resize", "resize@1"] and model.views.name == "flips" and model.threshold == threshold
    assert meta["info"]["candidate"] == "resize+resize@1"
    with torch.no_grad():
        got = model(x)[0]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)  # two identical members = one member
    assert main([str(images[0]), "--model", str(bundle)]) == 0
    (row,) = _lines(capsys.readouterr().out)
    assert row[1] == decided  # the threshold's class, not the argmax's
    assert float(row[2]) == pytest.approx(float(got[CLASSES.index(decided)]), abs=1e-4)


def test_unreadable_file_is_reported_and_the_rest_predicted(checkpoint, images, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert main([str(bad), str(images[0]), "--model", str(checkpoint)]) == 1
    out = capsys.readouterr()
    assert len(_lines(out.out)) == 1 and out.out.startswith(str(images[0]))
    assert f"error: {bad}: cannot read as an image" in out.err


def test_missing_checkpoint_is_one_line(tmp_path, images, capsys):
    assert main([str(images[0]), "--model", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model file not found" in err


def test_predict_runs_as_a_module(checkpoint, images):
    r = subprocess.run([sys.executable, "-m", "recipe.ship.predict", str(images[1]), "--model", str(checkpoint)],
                       cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    path, label, prob = r.stdout.strip().split("\t")
    with torch.no_grad():
        expected = load(str(checkpoint))(torch.from_numpy(prepare([images[1]], 32, 1)))[0]
    assert path == str(images[1]) and label == CLASSES[int(expected.argmax())]
    assert float(prob) == pytest.approx(float(expected.max()), abs=1e-4)


def deciding_threshold(probs: np.ndarray) -> tuple[float, list[str]]:
    """A threshold on p(fine) that overrules the argmax on at least one of ``probs``' images, with
    a margin of half that image's distance to 0 or 1, and the classes it decides: all fine when
    some image's argmax is crack (half the smallest p(fine)), else all crack (halfway from the
    largest p(fine) to 1)."""
    p1 = probs[:, 1]
    if (p1 < 0.5).any():
        return float(p1.min()) / 2, [CLASSES[1]] * len(p1)
    return (float(p1.max()) + 1) / 2, [CLASSES[0]] * len(p1)


def log_test_model(tmp_path: Path, checkpoint: Path, images, register_as: str | None = None):
    """A two-member bundle (flip_h views, a threshold from :func:`deciding_threshold` on
    ``images``) logged by evaluate's ``log_model`` into a SQLite store at ``tmp_path``
    (MLFLOW_TRACKING_URI must point there); its URI, the model and the classes it decides."""
    import mlflow

    from recipe.decide.ensemble import load_bundle, save_bundle
    from stages.evaluate import log_model

    raw = tmp_path / "raw"
    for p in images:
        (raw / "files").mkdir(parents=True, exist_ok=True)
        (raw / "files" / p.name).write_bytes(p.read_bytes())
    predictions = tmp_path / "predictions.csv"
    predictions.write_text("path,actual\n" + "".join(f"{p.name},fine\n" for p in images))
    spec = {"name": "flip_h", "scales": [1.0], "crop": 0.875, "n": 1, "beta": None, "augment": None}
    members = [("resize", checkpoint), ("finetune", checkpoint)]
    plain, _ = load_bundle(save_bundle(tmp_path / "probe.pt", members, views=spec, threshold=None, seed=0, info={}))
    with torch.no_grad():
        threshold, decided = deciding_threshold(plain(torch.from_numpy(prepare(list(images), 32, 1))).numpy())
    bundle = save_bundle(tmp_path / "bundle.pt", members, views=spec, threshold=threshold, seed=0,
                         info={"candidate": "finetune+resize"})
    model, _ = load_bundle(bundle)
    cfg = SimpleNamespace(model=SimpleNamespace(register_as=register_as, max_pixels=25_000_000, max_rows=64))
    experiment = mlflow.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        return log_model(bundle, model, cfg, predictions, raw), model, decided


def test_logged_mlflow_model_loads_and_predicts(checkpoint, images, tmp_path, monkeypatch, capsys):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    model_uri, model, decided = log_test_model(tmp_path, checkpoint, images, register_as="cells-test")
    import pandas as pd

    x = prepare(list(images), 32, 1)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    files = pd.DataFrame({"image": [p.read_bytes() for p in images]})  # the files' bytes, as the README shows
    got = pyfunc.predict(files)
    assert list(got.columns) == [*CLASSES, "predicted"]
    np.testing.assert_allclose(got[CLASSES].to_numpy(), expected, atol=1e-5)  # the ensemble and its views
    assert list(got["predicted"]) == decided  # and its threshold,
    assert decided != [CLASSES[i] for i in expected.argmax(1)]  # which overrules the argmax
    (column,) = pyfunc.metadata.get_input_schema().inputs
    assert column.name == "image" and column.type.name == "binary"
    assert pyfunc.metadata.metadata["threshold"] == model.threshold
    registered = mlflow.pyfunc.load_model("models:/cells-test/1")  # the registry switch
    np.testing.assert_allclose(registered.predict(files)[CLASSES].to_numpy(), expected, atol=1e-5)
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"image 1: cannot read as an image"):
        pyfunc.predict(pd.DataFrame({"image": [images[0].read_bytes(), b"\x89PNG\r\n\x1a\nnot really"]}))

    assert main([str(images[0]), "--model", model_uri]) == 0  # the predict command takes the URI too
    (row,) = _lines(capsys.readouterr().out)
    assert row[1] == decided[0]  # the model's threshold, through the URI
    assert float(row[2]) == pytest.approx(float(expected[0][CLASSES.index(row[1])]), abs=1e-4)


def test_predict_to_a_csv_over_a_folder_in_batches(checkpoint, tmp_path, capsys):
    """--csv: one row per image (path, prediction, a probability column per class); a folder means
    every image under it, in sorted order; rows come batch by batch and equal the model's own
    probabilities; a non-image file under the folder is left out and said, a broken image skipped."""
    import csv

    folder = tmp_path / "shots"
    for i in range(5):
        noise_image(folder / ("sub" if i % 2 else "") / f"{i}.png", 10 + i, size=40, mode="L")
    (folder / "README.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "out" / "predictions.csv"
    assert main([str(folder), "--model", str(checkpoint), "--csv", str(out), "--batch-size", "2"]) == 1
    err = capsys.readouterr().err
    assert "1 file(s) under the folders are not images by their extension" in err and "README.txt" in err
    assert f"error: {folder / 'broken.png'}: cannot read as an image" in err
    rows = list(csv.DictReader(out.open()))
    images = sorted(p for p in folder.rglob("*.png") if p.name != "broken.png")
    assert [r["path"] for r in rows] == [str(p) for p in images]
    assert list(rows[0]) == ["path", "prediction", *CLASSES]
    model = load(str(checkpoint))
    with torch.no_grad():
        probs = model(torch.from_numpy(prepare(images, 32, 1))).numpy()
    for r, p in zip(rows, probs):
        assert r["prediction"] == CLASSES[int(p.argmax())]
        assert [float(r[c]) for c in CLASSES] == pytest.approx(p.tolist(), abs=1e-6)
