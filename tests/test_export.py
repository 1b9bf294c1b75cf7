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

from recipe import export as E
from recipe.ensemble import Ensemble, load_bundle, save_bundle
from recipe.errors import ConfigError, DataError
from recipe.models import build_model
from recipe.onnx_model import OnnxModel
from recipe.predict import main, prepare
from recipe.session import save_checkpoint
from recipe.tta import Views
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
    folded, pairs = E.fold_bn(model, channels=3, side=32)
    assert pairs == E.batchnorms(model) > 0  # every BatchNorm of these bodies follows a convolution
    assert E.batchnorms(folded) == 0
    x = torch.rand(4, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)
    assert model.training is False and E.batchnorms(model) == pairs  # the original is left as it was


def test_folding_the_pretrained_lite0_on_real_cells():
    model = _model("efficientnet_lite0", weights="bundled")
    folded, pairs = E.fold_bn(model, channels=1, side=64)
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
    folded, pairs = E.fold_bn(model, channels=3, side=8)
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
    folded, pairs = E.fold_ensemble(model)
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
            "from recipe.predict import main; sys.exit(main(sys.argv[1:]))")
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
    """recipe.export.run on a split of real files: the metrics, and a failure when the tolerance is
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
    cfg = SimpleNamespace(fold_bn=True, opset=18, dynamic_batch=True, optimize=True, tolerance=1e-4)
    metrics = E.run(cfg, bundle=bundle, split=split, raw=raw, out=tmp_path / "out", workers=1, batch_size=4,
                    chosen_accuracy=0.5)
    assert (tmp_path / "out" / "model.onnx").is_file()
    assert metrics["parity"]["images"] == 6 and metrics["folded_pairs"] == 40 and metrics["batchnorm_left"] == 0
    assert metrics["test_accuracy"]["onnx"] == metrics["test_accuracy"]["checkpoint"]
    json.dumps(metrics)  # the stage writes it as JSON
    with pytest.raises(E.ExportError, match="export parity failed on 6 test images"):
        E.run(SimpleNamespace(fold_bn=True, opset=18, dynamic_batch=False, optimize=False, tolerance=1e-12), bundle=bundle,
              split=split, raw=raw, out=tmp_path / "out2", workers=1, batch_size=4)
