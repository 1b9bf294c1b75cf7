"""The export: BatchNorm folded into the convolutions, one ONNX graph with the model's metadata,
ONNX Runtime's parity with the checkpoint, and predict on the ONNX file without torch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from recipe.core.errors import ConfigError, DataError
from recipe.decide import fold as F
from recipe.decide.ensemble import Ensemble, load_bundle, save_bundle
from recipe.decide.tta import Views
from recipe.ship import export as E
from recipe.ship.onnx_model import OnnxModel
from recipe.ship.predict import main, prepare
from recipe.train.models import build_model
from recipe.train.session import save_checkpoint
from tests.conftest import REPO, noise_image, subprocess_env

HEAD = {"pool": "avg", "dropout": 0.2, "init": "kaiming", "init_gain": 1.0, "prior_bias": False}


def _model(name: str, weights=None, classes: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(name=name, weights=weights, mean=[0.5] * 3, std=[0.25] * 3, classes=classes, pool="avg",
                        dropout=0.2, init="kaiming", init_gain=1.0)
    if weights is None:  # random BN statistics and affine terms, so the fold has something to fold
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.eval()


def _elpv_cells(n: int) -> list[Path]:
    import elpv_dataset

    return sorted((Path(elpv_dataset.__file__).parent / "data" / "images").glob("*.png"))[:n]


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_folding_leaves_the_outputs_unchanged_on_random_inputs(name):
    model = _model(name)
    folded, pairs = F.fold_bn(model, channels=3, side=32)
    assert pairs == E.batchnorms(model) > 0  # every BatchNorm of these bodies follows a convolution
    assert E.batchnorms(folded) == 0
    x = torch.rand(4, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)
    assert model.training is False and E.batchnorms(model) == pairs  # the original is left as it was


def test_folding_the_pretrained_lite0_on_real_cells():
    model = _model("efficientnet_lite0", weights="bundled")
    folded, pairs = F.fold_bn(model, channels=1, side=64)
    assert pairs == 49
    x = torch.from_numpy(prepare(_elpv_cells(6), 128, 1))
    with torch.no_grad():
        ref, got = model(x).softmax(1), folded(x).softmax(1)
    assert (ref - got).abs().max() < 1e-5


class _Odd(nn.Module):
    """Three pairs that must not fold: an in-place op between conv and BN, a conv whose raw output
    is used again, a conv run twice (each time into its own BN); and one that must."""

    def __init__(self):
        super().__init__()
        self.c = nn.ModuleList(nn.Conv2d(3, 3, 3, padding=1) for _ in range(4))
        self.b = nn.ModuleList(nn.BatchNorm2d(3) for _ in range(5))

    def forward(self, x):
        x = self.b[0](self.c[0](x).relu_())          # in place: the BN's input is the conv's output, changed
        y = self.c[1](x)
        x = self.b[1](y) + y                          # the raw output used again
        x = self.b[2](self.c[2](x)) + self.b[3](self.c[2](x))  # one conv, two BNs
        return self.b[4](self.c[3](x))                # the one plain pair


def test_only_plain_conv_bn_pairs_are_folded():
    model = _Odd().eval()
    for bn in model.b:
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    folded, pairs = F.fold_bn(model, channels=3, side=8)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))
    assert pairs == 1 and isinstance(folded.b[4], nn.Identity)
    assert all(isinstance(folded.b[i], nn.BatchNorm2d) for i in range(4))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("checkpoints")
    cfg = {"name": "resnet18", "weights": None, "mean": [0.5] * 3, "std": [0.25] * 3, "head": HEAD}
    paths = []
    for i, size in enumerate((32, 48)):
        paths.append(save_checkpoint(tmp_path / f"m{i}.pt", _model("resnet18", seed=i), classes=["crack", "fine"],
                                     size=size, model_config=cfg, stage=f"stage{i}", epoch=1, channels=1))
    return paths


def _bundle(tmp_path, checkpoints, views="flips", threshold=0.45) -> Path:
    spec = {"name": views, "scales": [1.0, 1.25], "crop": 0.875, "n": 1, "beta": None, "augment": None}
    return save_bundle(tmp_path / "bundle.pt", [("stage0", checkpoints[0]), ("stage1", checkpoints[1])],
                       views=spec, threshold=threshold, seed=0, info={"candidate": "stage0+stage1"})


def probe() -> torch.Tensor:
    return torch.rand(5, 1, 48, 48, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, checkpoints):
    """The two-member bundle (32 and 48 px, flips, threshold 0.45), folded and exported once."""
    tmp_path = tmp_path_factory.mktemp("exported")
    model, _ = load_bundle(_bundle(tmp_path, checkpoints, threshold=None))
    with torch.no_grad():
        p = model(probe())[:, 1]
    # A threshold between the probe's probabilities, away from 0.5: the decision is not the argmax.
    threshold = float(p.sort().values[1:3].mean())
    model, _ = load_bundle(_bundle(tmp_path, checkpoints, threshold=threshold))
    folded, pairs = F.fold_ensemble(model)
    path = E.export_onnx(folded, tmp_path / "model.onnx", opset=18, dynamic_batch=True, optimize=True,
                         info={"candidate": "x"})
    return model, folded, pairs, path


def test_an_ensemble_exports_as_one_graph_with_its_views_threshold_and_metadata(exported):
    model, folded, pairs, path = exported
    assert pairs == 2 * 20 and E.batchnorms(folded) == 0  # ResNet-18 has 20 BatchNorms, each after a conv
    runtime = OnnxModel(path)
    assert runtime.classes == ["crack", "fine"] and runtime.size == 48 and runtime.channels == 1
    t = model.threshold
    assert runtime.threshold == t and runtime.names == ["stage0", "stage1"] and runtime.meta["views"] == "flips"
    assert [m["normalisation"] for m in runtime.meta["members"]] == [{"mean": [0.5] * 3, "std": [0.25] * 3}] * 2
    x = probe()  # the smaller member sees the batch resized to 32 px inside the graph
    for n in (1, 5):  # any batch size
        probs, predicted = runtime.run(x[:n].numpy())
        with torch.no_grad():
            expected = model(x[:n]).numpy()
        np.testing.assert_allclose(probs, expected, atol=1e-5)
        assert probs.dtype == np.float32 and list(predicted) == [int(p[1] >= t) for p in expected]
    assert list(predicted) != list(expected.argmax(1))  # the threshold decides, not the argmax
    check = E.parity(model, folded, path, x, batch_size=2)
    assert check["images"] == 5 and check["onnx_max_abs_diff"] < 1e-5 and check["folded_max_abs_diff"] < 1e-5
    assert check["onnx_class_mismatches"] == check["folded_class_mismatches"] == 0


def test_parity_sees_a_model_that_differs(exported, checkpoints):
    path = exported[3]
    other, _ = load_bundle(checkpoints[1])  # one of the two members alone
    check = E.parity(other, other, path, torch.rand(6, 1, 48, 48), batch_size=3)
    assert check["onnx_max_abs_diff"] > 1e-3 and check["folded_max_abs_diff"] == 0


def test_random_views_cannot_be_exported(tmp_path, checkpoints):
    model, _ = load_bundle(checkpoints[0])
    model.views = Views("augment", (("augment_0", lambda x: x.flip(3)),), None)  # as tta_views("augment") names it
    with pytest.raises(ConfigError, match="random draws"):
        E.export_onnx(model, tmp_path / "m.onnx", opset=18, dynamic_batch=True, optimize=True)


def test_a_fixed_batch_graph_predicts_any_number_of_images(tmp_path, checkpoints, capsys):
    """export.dynamic_batch: false gives a graph for one image; predict still takes many."""
    model, _ = load_bundle(checkpoints[0])
    path = E.export_onnx(model, tmp_path / "one.onnx", opset=18, dynamic_batch=False, optimize=False)
    runtime = OnnxModel(path)
    x = torch.rand(3, 1, 32, 32)
    probs, _ = runtime.run(x.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(probs, model(x).numpy(), atol=1e-5)
    pngs = [noise_image(tmp_path / f"c{i}.png", 20 + i, size=40, mode="L") for i in range(3)]
    assert main([*map(str, pngs), "--model", str(path)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_a_threshold_needs_two_classes(tmp_path):
    model = Ensemble([(_model("resnet18", classes=3), 32)], classes=["a", "b", "c"], channels=3, threshold=0.5)
    with pytest.raises(ConfigError, match="two classes, not 3"):
        E.Decision(model)


def test_a_file_that_is_not_our_onnx_model_is_one_line(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(DataError, match="not a loadable ONNX model") as exc:
        OnnxModel(bad)
    assert "\n" not in str(exc.value)
    with pytest.raises(DataError, match="model file not found"):
        OnnxModel(tmp_path / "missing.onnx")


def test_predict_runs_the_onnx_model_without_torch(tmp_path, exported):
    model, _, _, path = exported
    png = noise_image(tmp_path / "cell.png", 3, size=60, mode="L")
    # torch (and torchvision) cannot be imported in this interpreter: the ONNX path must not need them.
    code = ("import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None; "
            "from recipe.ship.predict import main; sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, str(png), "--model", str(path), "--top", "2"], cwd=REPO,
                       env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    name, first, p1, second, p2 = r.stdout.strip().split("\t")
    with torch.no_grad():
        expected = model(torch.from_numpy(prepare([png], 48, 1)))[0].numpy()
    assert first == ("fine" if expected[1] >= model.threshold else "crack")  # the graph's decision, threshold applied
    assert float(p1) == pytest.approx(float(expected[["crack", "fine"].index(first)]), abs=1e-4)
    assert main([str(png), "--model", str(path), "--views", "flips"]) == 2  # views are inside the graph


def test_export_run_writes_the_model_and_its_parity_figures(tmp_path, checkpoints, monkeypatch):
    """recipe.ship.export.run on a split of real files: the metrics, and a failure when the tolerance is
    below what the runtime gives."""
    from types import SimpleNamespace

    raw = tmp_path / "raw"
    rows = ["path,label,split"]
    for i in range(6):
        noise_image(raw / "files" / f"img{i}.png", 10 + i, size=56, mode="L")
        rows.append(f"img{i}.png,{['crack', 'fine'][i % 2]},test")
    split = tmp_path / "split.csv"
    split.write_text("\n".join(rows) + "\n")
    bundle = _bundle(tmp_path, checkpoints)
    cfg = SimpleNamespace(fold_bn=True, opset=18, dynamic_batch=True, optimize=True, tolerance=1e-4, parity_images=None)
    metrics = E.run(cfg, bundle=bundle, split=split, raw=raw, out=tmp_path / "out", workers=1, batch_size=4,
                    chosen_accuracy=0.5)
    assert (tmp_path / "out" / "model.onnx").is_file()
    assert metrics["parity"]["images"] == 6 and metrics["folded_pairs"] == 40 and metrics["batchnorm_left"] == 0
    assert metrics["test_accuracy"]["onnx"] == metrics["test_accuracy"]["checkpoint"]
    json.dumps(metrics)  # the stage writes it as JSON
    with pytest.raises(E.ExportError, match="export parity failed on 6 of 6 test images"):
        E.run(SimpleNamespace(fold_bn=True, opset=18, dynamic_batch=False, optimize=False, tolerance=1e-12, parity_images=None),
              bundle=bundle,
              split=split, raw=raw, out=tmp_path / "out2", workers=1, batch_size=4)


def _test_split(root: Path, mode: str, n: int = 6) -> tuple[Path, Path, list[Path], np.ndarray]:
    """A split.csv of ``n`` test images (``mode``: L or RGB) under ``root``: the split, the raw
    folder, the files and their labels (crack, fine alternately; 0, 1)."""
    raw = root / "raw"
    rows, files = ["path,label,split"], []
    for i in range(n):
        files.append(noise_image(raw / "files" / f"img{i}.png", 10 + i, size=56, mode=mode))
        rows.append(f"img{i}.png,{['crack', 'fine'][i % 2]},test")
    (root / "split.csv").write_text("\n".join(rows) + "\n")
    return root / "split.csv", raw, files, np.arange(n) % 2


def test_export_run_gives_gray_test_images_to_a_colour_model_and_refuses_other_channel_counts(tmp_path, checkpoints):
    """A model trained on some colour images (3 channels) is exported and checked on gray test
    images (as load_split decodes an all-gray split: 1 channel), each repeated to 3 channels;
    test images with more channels than the model takes are refused. The test accuracies are
    the decisions' (threshold applied), computed here from the model on the same files."""
    from types import SimpleNamespace

    cfg_model = {"name": "resnet18", "weights": None, "mean": [0.5] * 3, "std": [0.25] * 3, "head": HEAD}
    colour = save_checkpoint(tmp_path / "rgb.pt", _model("resnet18", seed=3), classes=["crack", "fine"], size=32,
                             model_config=cfg_model, stage="rgb", epoch=1, channels=3)
    split, raw, files, labels = _test_split(tmp_path / "gray", "L")
    model, _ = load_bundle(colour)
    with torch.no_grad():
        p = model(torch.from_numpy(prepare(files, 32, 3))).numpy()  # the gray files as RGB
    # a threshold (a midpoint of p[:, 1]) whose decisions score otherwise than the argmax's
    cuts = (np.sort(p[:, 1])[1:] + np.sort(p[:, 1])[:-1]) / 2
    t = next(float(c) for c in cuts if ((p[:, 1] >= c) == labels).mean() != (p.argmax(1) == labels).mean())
    bundle = save_bundle(tmp_path / "bundle.pt", [("rgb", colour)], views=None, threshold=t, seed=0, info={})
    cfg = SimpleNamespace(fold_bn=True, opset=18, dynamic_batch=True, optimize=False, tolerance=1e-4, parity_images=None)
    m = E.run(cfg, bundle=bundle, split=split, raw=raw, out=tmp_path / "out", workers=1, batch_size=4)
    assert m["channels"] == 3 and OnnxModel(tmp_path / "out" / "model.onnx").channels == 3
    assert m["parity"]["images"] == 6 and m["parity"]["onnx_class_mismatches"] == 0
    decided = (p[:, 1] >= t).astype(int)
    assert m["test_accuracy"]["checkpoint"] == m["test_accuracy"]["onnx"] == float((decided == labels).mean())
    split, raw, _, _ = _test_split(tmp_path / "rgb", "RGB")
    with pytest.raises(DataError, match=r"the test split has 3-channel images, the model takes 1; the exported graph"):
        E.run(cfg, bundle=checkpoints[0], split=split, raw=raw, out=tmp_path / "out3", workers=1, batch_size=4)


def _gate(monkeypatch, tmp_path, checkpoints, **figures) -> dict:
    """recipe.ship.export.run's gate on parity figures made up here (the export itself is stubbed):
    ``figures`` overrides a check that passes (largest differences 1e-6, no decision differing)."""
    from types import SimpleNamespace

    def fake_parity(checkpoint, folded, onnx_path, images, *, batch_size, onnx=None, reference=None):
        n = len(images)
        return {"images": n, "folded_max_abs_diff": 1e-6, "onnx_max_abs_diff": 1e-6, "folded_class_mismatches": 0,
                "onnx_class_mismatches": 0, "probabilities": {}, "predicted": np.zeros(n, int),
                "onnx_predicted": np.zeros(n, int), **figures}

    def fake_export(model, path, **kw):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"stub")
        return Path(path)

    monkeypatch.setattr(E, "parity", fake_parity)
    monkeypatch.setattr(E, "export_onnx", fake_export)
    monkeypatch.setattr(E, "onnx_probs", lambda path, images, batch_size: (np.zeros((len(images), 2), np.float32),
                                                                           np.zeros(len(images), int)))
    split, raw, _, _ = _test_split(tmp_path, "L", n=4)
    cfg = SimpleNamespace(fold_bn=False, opset=18, dynamic_batch=True, optimize=False, tolerance=1e-4, parity_images=None)
    return E.run(cfg, bundle=checkpoints[0], split=split, raw=raw, out=tmp_path / "out", workers=1, batch_size=4)


def test_the_export_gate_passes_close_figures(monkeypatch, tmp_path, checkpoints):
    m = _gate(monkeypatch, tmp_path, checkpoints)
    assert m["parity"] == {"images": 4, "folded_max_abs_diff": 1e-6, "onnx_max_abs_diff": 1e-6,
                           "folded_class_mismatches": 0, "onnx_class_mismatches": 0, "of_test_images": 4,
                           "reference": "checkpoint"}


@pytest.mark.parametrize("figures, says", [
    ({"folded_class_mismatches": 1}, "decided classes differing from the checkpoint: folded 1, ONNX 0"),
    ({"onnx_class_mismatches": 2}, "decided classes differing from the checkpoint: folded 0, ONNX 2"),
])
def test_the_export_gate_fails_on_a_decision_that_differs_within_the_tolerance(monkeypatch, tmp_path, checkpoints,
                                                                               figures, says):
    with pytest.raises(E.ExportError, match=r"export parity failed on 4 of 4 test images: largest probability difference "
                                            r"1e-06 \(export.tolerance 0.0001\), " + says):
        _gate(monkeypatch, tmp_path, checkpoints, **figures)


@pytest.mark.parametrize("which", ["folded_max_abs_diff", "onnx_max_abs_diff"])
def test_the_export_gate_fails_on_nan(monkeypatch, tmp_path, checkpoints, which):
    with pytest.raises(E.ExportError, match="largest probability difference nan"):
        _gate(monkeypatch, tmp_path, checkpoints, **{which: float("nan")})


def test_parity_on_a_sample_against_evaluates_probabilities_and_decisions(tmp_path, checkpoints):
    """export.parity_images: the folded model and the ONNX graph are compared on a seeded sample
    with evaluate's record of those images (its probabilities and decisions, computed once): a
    decision or a probability of evaluate's that the graph does not reproduce fails the stage."""
    from types import SimpleNamespace

    split, raw, files, labels = _test_split(tmp_path, "L", n=6)
    bundle = _bundle(tmp_path, checkpoints)
    full = E.run(SimpleNamespace(fold_bn=True, opset=18, dynamic_batch=True, optimize=False, tolerance=1e-4,
                                 parity_images=None), bundle=bundle, split=split, raw=raw, out=tmp_path / "full",
                 workers=1, batch_size=4)
    assert E.sample(6, 3).tolist() == sorted(set(E.sample(6, 3).tolist())) and len(E.sample(6, 3)) == 3
    assert E.sample(6, None).tolist() == E.sample(6, 9).tolist() == list(range(6))
    model, _ = load_bundle(bundle)
    with torch.no_grad():
        p = model(torch.from_numpy(prepare(files, model.size, 1))).numpy()
    decided = p.argmax(1)
    evaluated = {f"img{i}.png": (["crack", "fine"][int(d)], [round(float(v), 6) for v in p[i]])
                 for i, d in enumerate(decided)}
    cfg = SimpleNamespace(fold_bn=True, opset=18, dynamic_batch=True, optimize=False, tolerance=1e-4, parity_images=3)
    m = E.run(cfg, bundle=bundle, split=split, raw=raw, out=tmp_path / "sample", workers=1, batch_size=4,
              evaluated=evaluated)
    idx = E.sample(6, 3)
    assert (m["parity"]["images"], m["parity"]["of_test_images"], m["parity"]["reference"]) == (3, 6, "evaluate")
    assert m["test_accuracy"]["images"] == 3
    assert m["test_accuracy"]["onnx"] == float((decided[idx] == labels[idx]).mean())
    assert full["test_accuracy"]["onnx"] == full["test_accuracy"]["checkpoint"] == float((decided == labels).mean())
    flip = f"img{idx[0]}.png"
    flipped = {**evaluated, flip: ({"crack": "fine", "fine": "crack"}[evaluated[flip][0]], evaluated[flip][1])}
    with pytest.raises(E.ExportError, match="decided classes differing from evaluate: folded 1, ONNX 1"):
        E.run(cfg, bundle=bundle, split=split, raw=raw, out=tmp_path / "bad", workers=1, batch_size=4, evaluated=flipped)
    # a probability of evaluate's the graph does not reproduce (the same export, checked again)
    paths = [f"img{i}.png" for i in idx]
    moved = {**evaluated, flip: (evaluated[flip][0], [v + 1e-3 for v in evaluated[flip][1]])}
    folded, _ = F.fold_ensemble(model)
    x = torch.from_numpy(prepare([files[i] for i in idx], model.size, 1))
    check = E.parity(model, folded, tmp_path / "sample" / "model.onnx", x, batch_size=4,
                     reference=E._evaluated(moved, paths, ["crack", "fine"]))
    assert check["onnx_max_abs_diff"] == pytest.approx(1e-3, abs=1e-5) and check["onnx_class_mismatches"] == 0
    missing = {k: v for k, v in evaluated.items() if k != flip}
    with pytest.raises(DataError, match="evaluate's predictions lack 1 test image"):
        E._evaluated(missing, paths, ["crack", "fine"])
