"""Karpathy's checks: each must pass on a model that is right and fail on one that is not."""
from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from conftest import REPO
from recipe.core.config import StageParams, load_section, validate
from recipe.core.errors import ConfigError
from recipe.data.loader import Batches, ImageSet
from recipe.train import baseline
from recipe.train.baseline import (
    ACTIVATIONS,
    SimpleNet,
    check_batch_dependencies,
    check_capacity,
    check_init_loss,
    check_overfit,
    check_zero_input,
    other_label_lookalikes,
    prior_entropy,
)
from recipe.train.models import build_model
from recipe.train.schema import BaselineConfig
from recipe.train.session import Data
from stages._training import common_config

CPU = torch.device("cpu")


def tiny_model(priors=None, gain=0.01):
    return build_model(name="resnet18", weights=None, mean=[0.5] * 3, std=[0.25] * 3, classes=2, pool="avg",
                       dropout=0.0, init="kaiming", init_gain=gain, priors=priors)


def data(n=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 32, 32), generator=gen, dtype=torch.uint8)
    y = torch.tensor([0] * (n * 3 // 4) + [1] * (n - n * 3 // 4))
    return x, y


def test_prior_entropy():
    assert prior_entropy([0.5, 0.5]) == math.log(2)
    assert prior_entropy([1.0, 0.0]) == 0


def test_init_loss_passes_with_prior_bias_and_fails_with_a_loud_head():
    x, y = data()
    batches = Batches(x, y, batch_size=8, shuffle=True, seed=0, device=CPU)
    good, _ = check_init_loss(tiny_model([0.75, 0.25]), batches, batches=4, priors=[0.75, 0.25], prior_bias=True,
                              tolerance=0.1)
    assert good.passed and abs(good.value - prior_entropy([0.75, 0.25])) < 0.1
    loud, _ = check_init_loss(tiny_model(None, gain=50.0), batches, batches=4, priors=[0.75, 0.25],
                              prior_bias=False, tolerance=0.1)
    assert not loud.passed and "off by" in loud.detail


PATHS = [f"img/{i}.png" for i in range(8)]


def overfit(max_steps, lr=1e-3, lookalikes=None):
    torch.manual_seed(0)  # the random init: the same model every call
    x, y = data(8)
    return check_overfit(tiny_model(), x.float() / 255, y, max_steps=max_steps, lr=lr, max_loss=0.05, paths=PATHS,
                         classes=["a", "b"], lookalikes=lookalikes or {})


def test_overfit_one_batch_stops_as_soon_as_the_loss_is_low():
    check, numbers = overfit(max_steps=200)
    steps = numbers["overfit_steps"]
    assert check.passed and check.value < 0.05 and 0 < steps < 200, check.detail
    assert f"after {steps} steps" in check.detail and numbers["overfit_not_memorised"] == []
    # One step fewer is not enough: it stopped at the first step that got there.
    short, _ = overfit(max_steps=steps - 1)
    assert not short.passed and short.value >= 0.05


def test_overfit_starts_again_at_a_tenth_of_a_rate_that_wrecked_the_network():
    # At 0.01 the tiny net ends with the same output for every image (its loss stuck at 0.5653,
    # 30 steps); from the same weights at 0.001 it memorises the batch in 17.
    wrecked, numbers = overfit(max_steps=30, lr=0.01)
    assert not wrecked.passed and numbers["overfit_tries"] == 1
    torch.manual_seed(0)
    x, y = data(8)
    check, numbers = check_overfit(tiny_model(), x.float() / 255, y, max_steps=30, lr=0.01, max_loss=0.05,
                                   paths=PATHS, classes=["a", "b"], lookalikes={}, retries=1)
    assert check.passed and numbers["overfit_lr"] == 0.001 and numbers["overfit_tries"] == 2, check.detail
    assert 0 < numbers["overfit_steps"] < 30 and "at lr 0.001; at lr 0.01: " in check.detail
    assert "every image got the same output" in check.detail
    # It started again from the weights it was given: the same steps and loss as a fresh run at 0.001.
    fresh, fresh_numbers = overfit(max_steps=30, lr=0.001)
    assert (numbers["overfit_steps"], check.value) == (fresh_numbers["overfit_steps"], fresh.value)


def test_overfit_failure_names_the_images_and_their_lookalikes():
    check, numbers = overfit(max_steps=2, lr=1e-9, lookalikes={"img/0.png": [("img/9.png", "b")]})
    assert not check.passed and "over by" in check.detail and numbers["overfit_steps"] == 2
    stuck = numbers["overfit_not_memorised"]
    assert stuck and all(r["loss"] >= 0.05 for r in stuck)
    assert [r["loss"] for r in stuck] == sorted((r["loss"] for r in stuck), reverse=True)
    by_path = {r["path"]: r for r in stuck}
    assert by_path["img/0.png"]["lookalikes_other_label"] == [{"path": "img/9.png", "label": "b"}]
    assert by_path["img/0.png"]["label"] == "a"  # data(8): six of class 0, then two of class 1
    assert "img/0.png (a, loss" in check.detail and "look-alike with another label: img/9.png (b)" in check.detail
    assert "not a pipeline bug" in check.detail
    assert all(by_path[p]["lookalikes_other_label"] == [] for p in by_path if p != "img/0.png")


def test_other_label_lookalikes_come_from_the_duplicate_group():
    table = pd.DataFrame({"path": ["a1", "a2", "b1", "a3"], "label": ["a", "a", "b", "a"], "split": ["train"] * 4,
                          "group": [1, 1, 1, 2]})
    found = other_label_lookalikes(table, ["a1", "b1", "a3"])
    assert found == {"a1": [("b1", "b")], "b1": [("a1", "a"), ("a2", "a")], "a3": []}


def test_input_independent_check_tells_real_features_from_zeros():
    gen = torch.Generator().manual_seed(1)
    y = torch.randint(0, 2, (256,), generator=gen)
    real = torch.randn(256, 16, generator=gen) + 3 * y[:, None].float()  # informative features
    zero = torch.zeros(256, 16)
    head = torch.nn.Linear(16, 2)
    mk = lambda f, train: Batches(f, y, batch_size=32, shuffle=train, seed=0, device=CPU)
    check, numbers = check_zero_input(head, mk(real, True), mk(zero, True), mk(real, False), mk(zero, False),
                                      steps=60, lr=0.01, margin=0.1)
    assert check.passed and numbers["real_input_valid_loss"] < numbers["zero_input_valid_loss"]
    same, _ = check_zero_input(head, mk(zero, True), mk(zero, True), mk(zero, False), mk(zero, False),
                               steps=60, lr=0.01, margin=0.1)
    assert not same.passed


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_simple_net_shapes(activation):
    net = SimpleNet(1, 3, 4, activation)
    assert net(torch.rand(2, 1, 32, 32)).shape == (2, 3)
    assert any(isinstance(m, type(ACTIVATIONS[activation]())) for m in net.modules())


def test_an_unknown_activation_is_a_one_line_error():
    with pytest.raises(ConfigError, match="baseline.simple.activation = 'swish': not one of relu, leaky_relu"):
        SimpleNet(1, 3, 4, "swish")


class MixesTheBatch(nn.Module):
    """A deliberately wrong reshape: logits (N, 2) read back as (2, N) and transposed, so row i
    takes values computed from other samples."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out = self.inner(x)
        return out.reshape(out.shape[1], -1).t()


def test_backprop_dependencies_pass_on_real_models_and_fail_on_one_that_mixes_the_batch():
    x = torch.rand(4, 1, 32, 32)
    for model in (tiny_model(), SimpleNet(1, 2, 4, "relu")):
        check, numbers = check_batch_dependencies(model, x)
        assert check.passed, check.detail
        assert numbers["batch_dependency_own"] > 0 and numbers["batch_dependency_cross"] == 0
        # BatchNorm in train mode mixes the batch by design: reported, not judged.
        assert numbers["batch_dependency_train_mode"] > 0
    mixed, numbers = check_batch_dependencies(MixesTheBatch(SimpleNet(1, 2, 4, "relu")), x)
    assert not mixed.passed and numbers["batch_dependency_cross"] > 0


# --- the capacity check: the simple net, wider, must reach a lower training loss -------------

def test_capacity_check_compares_the_final_epochs_training_losses():
    narrow, wide = 0.41, 0.36
    check, numbers = check_capacity(narrow, wide, width=16, capacity_width=32, images=256, epochs=2)
    assert check.passed and check.name == "capacity" and (check.value, check.limit) == (0.36, 0.41)
    assert "width 16: 0.4100, width 32: 0.3600" in check.detail and "for 2 epochs" in check.detail
    assert "256 train images" in check.detail
    assert numbers == {"capacity_narrow_train_loss": 0.41, "capacity_train_loss": 0.36}
    same, _ = check_capacity(narrow, narrow, width=16, capacity_width=32, images=256, epochs=2)  # not lower is not enough
    assert not same.passed and "not lower" in same.detail
    worse, _ = check_capacity(wide, narrow, width=16, capacity_width=32, images=256, epochs=2)
    assert not worse.passed


def test_capacity_check_passes_when_both_nets_memorised_the_set():
    # ELPV seed 1: both fit the 64 images, the wider a little higher; the order of two fitted losses is noise
    check, _ = check_capacity(0.0160, 0.0261, width=16, capacity_width=32, images=64, epochs=40, fitted=0.05)
    assert check.passed and "both fitted the set (under 0.05)" in check.detail
    unfit, _ = check_capacity(0.0160, 0.0612, width=16, capacity_width=32, images=64, epochs=40, fitted=0.05)
    assert not unfit.passed and "or both under 0.05" in unfit.detail  # one of them did not fit: it still fails
    strict, _ = check_capacity(0.0160, 0.0261, width=16, capacity_width=32, images=64, epochs=40, fitted=None)
    assert not strict.passed


def _memorise(n=64, size=16, seed=0):
    """Random images with random labels: only capacity can fit them (memorisation)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, size, size), generator=gen, dtype=torch.uint8)
    labels = torch.arange(n) % 2
    labels = labels[torch.randperm(n, generator=gen)]
    split = lambda a, b: ImageSet(images[a:b], labels[a:b], [f"{i}.png" for i in range(a, b)], ["a", "b"])
    return Data(split(0, n - 16), split(n - 16, n), ["a", "b"])


def _simple_common(params):
    p = copy.deepcopy(params)
    p["train"] = {**p["train"], "image_size": 16, "batch_size": 16, "device": "cpu", "channels_last": False}
    p["augment"] = {**yaml.safe_load((REPO / "conf/augment/none.yaml").read_text()),
                    **{k: p["augment"][k] for k in ("crop_aspect", "blur_sigma")}}
    cfg = load_section("baseline", BaselineConfig, p).simple.model_copy(
        update={"image_size": 16, "width": 4, "capacity_width": 16, "epochs": 1, "lr": 0.01, "capacity_images": 32,
                "capacity_epochs": 6})
    return common_config(StageParams("test", ["seed", "train", "augment"], p)), cfg


def test_capacity_check_passes_when_the_wider_net_fits_better_and_fails_when_it_cannot_learn(params, monkeypatch):
    torch.manual_seed(0)
    common, cfg = _simple_common(params)
    built = []

    class Counted(SimpleNet):
        def __init__(self, channels, classes, width, activation):
            super().__init__(channels, classes, width, activation)
            built.append(width)

    monkeypatch.setattr(baseline, "SimpleNet", Counted)
    numbers, check = baseline._simple_model(common, cfg, _memorise(), CPU)
    assert built == [4, 4, 16], "the simple net, then both widths for the check"
    assert check.passed, check.detail
    assert numbers["capacity_train_loss"] < numbers["capacity_narrow_train_loss"] == check.limit
    losses = f"width 4: {numbers['capacity_narrow_train_loss']:.4f}, width 16: {numbers['capacity_train_loss']:.4f}"
    assert losses in check.detail and "32 train images" in check.detail and "for 6 epochs" in check.detail

    class WideCannotLearn(SimpleNet):
        """The wider net's logits are always 0: its loss stays at ln 2, whatever it is given."""

        def forward(self, x):
            out = super().forward(x)
            return out * 0 if self.fc.in_features == 8 * cfg.capacity_width else out

    monkeypatch.setattr(baseline, "SimpleNet", WideCannotLearn)
    torch.manual_seed(0)
    again, stuck = baseline._simple_model(common, cfg, _memorise(), CPU)
    assert not stuck.passed and "not lower" in stuck.detail
    assert again["capacity_train_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert again["capacity_narrow_train_loss"] == numbers["capacity_narrow_train_loss"]  # the same seeded start


def test_capacity_check_off_with_null_and_the_wider_net_must_be_wider(params):
    common, cfg = _simple_common(params)
    numbers, check = baseline._simple_model(common, cfg.model_copy(update={"capacity_width": None, "epochs": 1}),
                                            _memorise(), CPU)
    assert check is None and "capacity_train_loss" not in numbers
    simple = {**params["baseline"]["simple"], "width": 16, "capacity_width": 16}
    with pytest.raises(ConfigError, match=r"baseline.simple.capacity_width = 16: must be greater than width \(16\)"):
        validate("baseline", {**params["baseline"], "simple": simple}, BaselineConfig)
