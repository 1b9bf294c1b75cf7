"""Inside the model (recipe/decide/inside.py): the weight change with known answers, Grad-CAM on a
hand-made network whose evidence sits where a signal was planted, the pictures, the report."""
from __future__ import annotations

import copy
import csv

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import noise_image
from recipe.core.config import validate
from recipe.core.errors import ConfigError
from recipe.decide import inside
from recipe.decide.ensemble import Ensemble
from recipe.decide.schema import InsideConfig
from recipe.report import write_report
from recipe.train.models import Classifier, Head, build_model

MODEL_CONFIG = {"name": "resnet18", "weights": None, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                "adapt_bn": False, "head": {"pool": "avg", "dropout": 0.0, "init": "kaiming", "init_gain": 0.01,
                                            "prior_bias": False}}
CLASSES = ["bad", "good"]


def resnet(seed: int) -> Classifier:
    """ResNet-18, random init, as inside.initial_model builds it for ``weights: null``."""
    h = MODEL_CONFIG["head"]
    torch.manual_seed(seed)
    return build_model(name="resnet18", weights=None, mean=MODEL_CONFIG["mean"], std=MODEL_CONFIG["std"], classes=2,
                       pool=h["pool"], dropout=h["dropout"], init=h["init"], init_gain=h["init_gain"]).eval()


def test_the_real_config_validates_and_a_wrong_key_or_count_is_one_clear_error(params):
    cfg = validate("inside", params["inside"], InsideConfig)
    assert cfg.activation_channels >= 1 and cfg.gradcam_top_losses >= 0
    with pytest.raises(ConfigError, match="gradcam_top_loses"):
        validate("inside", {**params["inside"], "gradcam_top_loses": 3}, InsideConfig)
    with pytest.raises(ConfigError, match="activation_channels"):
        validate("inside", {**params["inside"], "activation_channels": 0}, InsideConfig)


def test_weight_change_is_zero_unchanged_and_the_hand_computed_ratio_for_one_changed_layer():
    before = resnet(0)
    after = copy.deepcopy(before)
    rows = inside.weight_change(before, after)
    # ResNet-18's body: the stem, 16 block convolutions, 3 downsample convolutions; the head's fc left out.
    assert len(rows) == 20 and all(r["change"] == 0 for r in rows)
    assert rows[0] == {"layer": "body.0", "group": "early", "change": 0.0}  # forward order: the stem first
    assert rows[-1]["layer"] == "body.7.1.conv2" and rows[-1]["group"] == "late"
    assert not any(r["layer"].startswith("head") for r in rows)
    conv = after.body[6][0].conv1  # layer3's first convolution (late group)
    delta = torch.linspace(-1, 1, conv.weight.numel()).view_as(conv.weight) * 1e-3
    w0 = conv.weight.detach().double().clone()
    with torch.no_grad():
        conv.weight.add_(delta)
    expected = float(delta.double().norm() / w0.norm())
    changed = {r["layer"]: r["change"] for r in inside.weight_change(before, after) if r["change"] != 0}
    assert list(changed) == ["body.6.0.conv1"] and changed["body.6.0.conv1"] == pytest.approx(expected, rel=1e-9)
    assert inside.group_means(inside.weight_change(before, after)) == pytest.approx(
        {"early": 0.0, "late": expected / 10})  # late: layer3 and layer4, 5 weighted layers each


def test_the_member_trained_last_is_the_latest_stage_then_the_latest_epoch():
    meta = {"members": [{"stage": "resize@0", "epoch": 0}, {"stage": "finetune", "epoch": 6},
                        {"stage": "resize", "epoch": 2}, {"stage": "train_head", "epoch": 9}]}
    assert inside.last_trained(meta) == 2
    single = {"members": ["finetune"], "stage": "finetune", "epoch": 3, "model_config": MODEL_CONFIG}  # a stage checkpoint
    assert inside.last_trained(single) == 0 and inside.member_meta(single, 0) is single


def planted_net() -> Classifier:
    """A network whose evidence for class 1 is brightness: one conv channel averaging the
    neighbourhood (+) and one its negative, ReLU, 4x4 max pooling (a 16x16 map for 64x64 input);
    class 1's logit is channel 0's mean, class 0's channel 1's (0 for non-negative images)."""
    conv = nn.Conv2d(3, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.stack([torch.full((3, 3, 3), 1 / 27), torch.full((3, 3, 3), -1 / 27)]))
    body = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(4))
    head = Head(2, 2, pool="avg", dropout=0.0)
    with torch.no_grad():
        head.fc.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
        head.fc.bias.zero_()
    return Classifier(body, head, [[body], [head]], ["body", "head"], [0, 0, 0], [1, 1, 1]).eval()


def test_gradcam_through_captum_is_image_sized_and_sits_on_the_planted_signal():
    x = torch.full((2, 1, 64, 64), 0.05)
    x[0, :, 8:24, 40:56] = 1.0  # image 0: a bright square top right
    x[1, :, 44:60, 4:20] = 1.0  # image 1: bottom left
    cams = inside.gradcam(planted_net(), x, [1, 1])
    assert cams.shape == (2, 64, 64) and (cams >= 0).all()
    for cam, (rows, cols) in zip(cams, [(slice(8, 24), slice(40, 56)), (slice(44, 60), slice(4, 20))]):
        square = np.zeros((64, 64), dtype=bool)
        square[rows, cols] = True
        assert cam[square].mean() > 5 * cam[~square].mean()
        r, c = np.unravel_index(cam.argmax(), cam.shape)
        assert square[r, c]
    assert inside.gradcam(planted_net(), x, [0, 0]).max() == 0  # no evidence for class 0 anywhere


@pytest.fixture(scope="module")
def inspected(tmp_path_factory):
    """inside.run on a one-member bundle: an untrained ResNet-18 (seed 7) whose layer4 was then
    moved, 8 test images (48 px noise, grayscale), a predictions.csv with known mistakes."""
    base = tmp_path_factory.mktemp("inspect")
    net = resnet(7)
    with torch.no_grad():
        for p in net.body[7].parameters():
            if p.dim() > 1:
                p.mul_(1.1)  # relative change exactly 0.1 in every weighted layer of layer4
    model = Ensemble([(net, 64)], classes=CLASSES, channels=1, names=["resize"])
    meta = {"members": [{"model_config": MODEL_CONFIG, "stage": "resize", "epoch": 2, "name": "resize", "size": 64}]}
    truth = ["bad"] * 4 + ["good"] * 4
    p_good = [0.1, 0.2, 0.9, 0.6, 0.8, 0.7, 0.3, 0.95]  # images 2, 3 and 6 are mistakes
    with open(base / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "actual", "predicted", "probability", "predicted_chosen", "probability_chosen", "p_bad",
                    "p_good"])
        for i, (t, p) in enumerate(zip(truth, p_good)):
            rel = f"{t}/{t}_{i}.png"
            noise_image(base / "raw/files" / rel, 100 + i)
            pred = CLASSES[int(p >= 0.5)]
            w.writerow([rel, t, pred, max(p, 1 - p), pred, max(p, 1 - p), 1 - p, p])
    cfg = InsideConfig(activation_images=2, activation_channels=3, gradcam_top_losses=3, gradcam_per_class=2)
    numbers = inside.run(cfg, model=model, meta=meta, predictions=base / "predictions.csv", raw=base / "raw",
                          out=base / "evaluate/inside", seed=7)
    return base, numbers


def test_run_writes_every_picture_and_the_weight_change_per_group(inspected):
    base, numbers = inspected
    for name in inside.PICTURES:
        img = np.asarray(Image.open(base / "evaluate/inside" / name).convert("L"), dtype=float)
        assert img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 5, name  # drawn, not blank
    # "before" is the seed's init, so only the moved layer4 changed: 5 of the late group's 10 layers.
    assert numbers["weight_change"] == pytest.approx({"early": 0.0, "late": 0.1 * 5 / 10})
    assert numbers["first_conv_change"] == 0 and numbers["max_weight_change"] == pytest.approx(0.1)
    assert (numbers["member"], numbers["size"], numbers["layers"]) == ("resize", 64, 20)
    assert numbers["images"] == 7  # 3 top losses (2, 6, 3), 2 correct per class (0, 1; 7, 4); the activations' (0, 7) among them


def test_report_embeds_the_inside_the_model_section(inspected, tmp_path):
    base, numbers = inspected
    none = tmp_path / "none"
    kw = dict(audit=none, split=none, baseline=none, lr_find=none, stages={}, select=none)
    page = write_report(tmp_path / "report.html", evaluate=base / "evaluate", metrics={"inside": numbers}, **kw).read_text()
    part = page.split('<section id="inside">')[1].split("</section>")[0]
    assert "<h2>Inside the model</h2>" in part and "<code>resize</code>" in part
    assert part.count("data:image/png;base64,") == len(inside.PICTURES) and "not found" not in part
    missing = write_report(tmp_path / "r2.html", evaluate=none, metrics={}, **kw).read_text()
    part = missing.split('<section id="inside">')[1].split("</section>")[0]
    assert part.count("not found") == len(inside.PICTURES) and "base64" not in part


def test_the_same_inputs_write_the_same_report_bytes(inspected, tmp_path):
    import time

    base, numbers = inspected
    none = tmp_path / "none"
    kw = dict(audit=none, split=none, baseline=none, lr_find=none, stages={}, select=none, evaluate=base / "evaluate",
              metrics={"inside": numbers})
    first = write_report(tmp_path / "a.html", **kw).read_bytes()
    assert time.strftime("%Y-%m-%d").encode() not in first  # no clock in the page
    assert write_report(tmp_path / "b.html", **kw).read_bytes() == first
