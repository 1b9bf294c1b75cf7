"""Models: the bundled Lite0 weights load offline, torchvision bodies build, the head starts at
the priors, freezing and parameter groups follow the three layer groups."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from recipe.core.errors import ConfigError
from recipe.train.models import Classifier, build_model, freeze_to, param_groups, set_bn_mode, spread_lrs

torch.set_num_threads(1)

MEAN, STD = [0.498] * 3, [0.502] * 3
PRIORS = [0.7, 0.3]


def model(name: str = "efficientnet_lite0", weights: str | None = "bundled", **kw) -> Classifier:
    args = dict(name=name, weights=weights, mean=MEAN, std=STD, classes=2, pool="avg", dropout=0.2,
                init="kaiming", init_gain=0.1, priors=PRIORS)
    args.update(kw)
    return build_model(**args)


def is_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


def group_params(m: Classifier) -> list[list[nn.Parameter]]:
    return [[p for module in group for p in module.parameters()] for group in m.groups]


# --- building -------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3])
def test_lite0_bundled_forward_shape(channels):
    torch.manual_seed(0)
    m = model().eval()
    with torch.no_grad():
        out = m(torch.rand(4, channels, 64, 64))
    assert out.shape == (4, 2)
    assert torch.isfinite(out).all()


def test_lite0_grayscale_equals_repeated_rgb():
    m = model().eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(m(x), m(x.repeat(1, 3, 1, 1)), atol=1e-6)


def test_head_bias_is_log_priors():
    m = model()
    assert torch.allclose(m.head.fc.bias.double(), torch.tensor(PRIORS, dtype=torch.float64).log(), atol=1e-6)


def test_head_bias_normalises_unnormalised_priors_and_zero_without_priors():
    m = model(priors=[7.0, 3.0])
    assert torch.allclose(m.head.fc.bias.double(), torch.tensor(PRIORS, dtype=torch.float64).log(), atol=1e-6)
    assert torch.equal(model(priors=None).head.fc.bias, torch.zeros(2))


def test_small_init_gain_predicts_priors_at_init():
    torch.manual_seed(0)
    m = model().eval()
    with torch.no_grad():
        probs = m(torch.rand(16, 1, 64, 64)).softmax(1)
    assert torch.allclose(probs.mean(0), torch.tensor(PRIORS), atol=0.1)
    # and the loss at init is near the prior entropy, what baseline.check_init_loss expects
    assert probs.max(1).values.max() < 0.9


def test_init_gain_scales_head_weights():
    torch.manual_seed(0)
    big = model(init_gain=1.0).head.fc.weight
    torch.manual_seed(0)
    small = model(init_gain=0.1).head.fc.weight
    assert torch.allclose(small, big * 0.1)
    # kaiming (linear): std 1/sqrt(fan_in) before the gain
    assert big.std().item() == pytest.approx(1 / math.sqrt(big.shape[1]), rel=0.1)


def test_unknown_init_raises_config_error():
    with pytest.raises(ConfigError, match="model.head.init"):
        model(init="orthogonal")


def test_avgmax_pool_doubles_head_input():
    m = model(pool="avgmax").eval()
    assert m.head.fc.in_features == 2 * 1280
    with torch.no_grad():
        assert m(torch.rand(2, 3, 64, 64)).shape == (2, 2)


def test_no_weights_differs_from_bundled():
    torch.manual_seed(0)
    bundled = model(weights="bundled").body.state_dict()
    torch.manual_seed(0)
    scratch = model(weights=None).body.state_dict()
    assert bundled.keys() == scratch.keys()
    differing = [k for k in bundled if bundled[k].is_floating_point() and not torch.equal(bundled[k], scratch[k])]
    assert differing, "weights=None gave the same body as the bundled ImageNet weights"
    # the stem convolution in particular comes from the file
    assert "net._conv_stem.weight" in differing


def test_bundled_weights_are_deterministic():
    a, b = model().body.state_dict(), model().body.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_missing_weights_file_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="model.weights"):
        model(weights=str(tmp_path / "nope.pt"))


def test_lite0_weights_from_a_path(tmp_path):
    src = model()
    path = tmp_path / "w.pt"
    torch.save(src.body.net.state_dict(), path)
    torch.manual_seed(1)
    loaded = model(weights=str(path))
    assert all(torch.equal(v, loaded.body.state_dict()[k]) for k, v in src.body.state_dict().items())


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0"])
def test_torchvision_models_build_and_forward(name):
    torch.manual_seed(0)
    m = model(name=name, weights=None).eval()
    assert len(m.groups) == 3 and m.group_names == ["early", "late", "head"]
    assert all(len(g) > 0 for g in m.groups)
    with torch.no_grad():
        out = m(torch.rand(2, 1, 64, 64))
    assert out.shape == (2, 2)
    assert torch.isfinite(out).all()
    assert torch.allclose(m.head.fc.bias.double(), torch.tensor(PRIORS, dtype=torch.float64).log(), atol=1e-6)


def test_unknown_model_name_raises_config_error():
    with pytest.raises(ConfigError, match=r"model\.name") as info:
        model(name="no_such_net_42", weights=None)
    assert "no_such_net_42" in str(info.value)


# --- groups, freezing -----------------------------------------------------------------------

@pytest.mark.parametrize("name,weights", [("efficientnet_lite0", None), ("resnet18", None)])
def test_groups_partition_the_parameters(name, weights):
    m = model(name=name, weights=weights)
    ids = [id(p) for g in group_params(m) for p in g]
    assert len(ids) == len(set(ids)), "a parameter belongs to more than one group"
    assert set(ids) == {id(p) for p in m.parameters()}, "some parameter belongs to no group"
    assert all(len(g) > 0 for g in group_params(m))


def test_freeze_to_head_only():
    m = model()
    freeze_to(m, m.head_group)
    early, late, head = group_params(m)
    assert all(p.requires_grad for p in head)
    assert not any(p.requires_grad for p in early + late)
    assert {id(p) for p in m.parameters() if p.requires_grad} == {id(p) for p in m.head.parameters()}


def test_freeze_to_late_and_head():
    m = model()
    freeze_to(m, 1)
    early, late, head = group_params(m)
    assert all(p.requires_grad for p in late + head)
    assert not any(p.requires_grad for p in early)


def test_freeze_to_zero_trains_everything_and_undoes_freezing():
    m = model()
    freeze_to(m, m.head_group)
    freeze_to(m, 0)
    assert all(p.requires_grad for p in m.parameters())


def test_freeze_to_train_bn_keeps_body_batchnorm_trainable():
    m = model()
    freeze_to(m, 2, train_bn=True)
    bn = [p for mod in m.body.modules() if is_bn(mod) for p in mod.parameters(recurse=False)]
    convs = [mod.weight for mod in m.body.modules() if isinstance(mod, nn.Conv2d)]
    assert bn and convs
    assert all(p.requires_grad for p in bn)
    assert not any(p.requires_grad for p in convs)
    assert all(p.requires_grad for p in m.head.parameters())


def test_frozen_groups_get_no_gradient():
    m = model(weights=None)
    freeze_to(m, m.head_group)
    m(torch.rand(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is None for p in m.body.parameters())
    assert all(p.grad is not None for p in m.head.parameters())


# --- learning rates and optimizer groups ---------------------------------------------------

def test_spread_lrs():
    assert spread_lrs(1e-3, 100, 3) == pytest.approx([1e-5, 1e-4, 1e-3], rel=1e-9)
    assert spread_lrs(1e-3, 9, 3) == pytest.approx([1e-3 / 9, 1e-3 / 3, 1e-3], rel=1e-9)
    assert spread_lrs(1e-3, 100, 1) == [1e-3]
    assert spread_lrs(2e-3, 1, 3) == pytest.approx([2e-3] * 3)


def _norm_or_bias_ids(m: Classifier) -> set[int]:
    out = set()
    for mod in m.modules():
        for name, p in mod.named_parameters(recurse=False):
            if name == "bias" or isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
                out.add(id(p))
    return out


def test_param_groups_lrs_and_weight_decay():
    m = model()
    freeze_to(m, 0)
    lrs = spread_lrs(1e-3, 100, 3)
    groups = param_groups(m, lrs, weight_decay=0.01, bn_weight_decay=False, l1=0.0)
    names = [g["name"] for g in groups]
    assert names == ["early", "early.no_decay", "late", "late.no_decay", "head", "head.no_decay"]
    lr_of = dict(zip(["early", "late", "head"], lrs))
    no_wd = _norm_or_bias_ids(m)
    members = {}
    for g in groups:
        base = g["name"].split(".")[0]
        assert g["lr"] == lr_of[base]
        ids = {id(p) for p in g["params"]}
        if g["name"].endswith(".no_decay"):
            assert g["weight_decay"] == 0.0
            assert ids <= no_wd
        else:
            assert g["weight_decay"] == 0.01
            assert not ids & no_wd
        members[g["name"]] = ids
    # every parameter in exactly one optimizer group, and in the one of its layer group
    all_ids = [i for ids in members.values() for i in ids]
    assert len(all_ids) == len(set(all_ids)) == len(list(m.parameters()))
    for name, params in zip(["early", "late", "head"], group_params(m)):
        assert {id(p) for p in params} == members[name] | members[f"{name}.no_decay"]
    # the head: weight decays, bias does not
    assert members["head"] == {id(m.head.fc.weight)}
    assert members["head.no_decay"] == {id(m.head.fc.bias)}


def test_param_groups_bn_weight_decay_puts_everything_in_decay():
    m = model()
    freeze_to(m, 0)
    groups = param_groups(m, [1.0, 2.0, 3.0], weight_decay=0.1, bn_weight_decay=True, l1=0.0)
    assert [g["name"] for g in groups] == ["early", "late", "head"]
    assert all(g["weight_decay"] == 0.1 for g in groups)


def test_param_groups_put_l1_where_weight_decay_goes():
    """optim.l1 on the conv and linear weights; biases and BatchNorm parameters carry l1 = 0, so
    recipe.train.fit's term is l1 * sum|w| over exactly the decayed weights."""
    m = model()
    freeze_to(m, 0)
    groups = param_groups(m, [1.0, 2.0, 3.0], weight_decay=0.01, bn_weight_decay=False, l1=1e-4)
    assert {g["name"]: g["l1"] for g in groups} == {"early": 1e-4, "early.no_decay": 0.0, "late": 1e-4,
                                                    "late.no_decay": 0.0, "head": 1e-4, "head.no_decay": 0.0}
    with_l1 = {id(p) for g in groups if g["l1"] for p in g["params"]}
    assert id(m.head.fc.weight) in with_l1 and id(m.head.fc.bias) not in with_l1
    assert not any(id(p) in with_l1 for mod in m.modules() if is_bn(mod) for p in mod.parameters())
    assert all(p.dim() > 1 for g in groups if g["l1"] for p in g["params"])


def test_param_groups_leave_out_frozen_params():
    m = model()
    freeze_to(m, 1)
    groups = param_groups(m, [1e-5, 1e-4, 1e-3], weight_decay=0.01, bn_weight_decay=False, l1=0.0)
    assert not any(g["name"].startswith("early") for g in groups)
    frozen = {id(p) for p in m.parameters() if not p.requires_grad}
    assert frozen
    assert not any(id(p) in frozen for g in groups for p in g["params"])
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in m.parameters())
    # the optimizer accepts them
    opt = torch.optim.AdamW(groups)
    assert [g["lr"] for g in opt.param_groups] == [1e-4, 1e-4, 1e-3, 1e-3]


def test_param_groups_train_bn_gives_early_no_decay_only():
    m = model()
    freeze_to(m, 2, train_bn=True)
    groups = param_groups(m, [1e-5, 1e-4, 1e-3], weight_decay=0.01, bn_weight_decay=False, l1=0.0)
    names = [g["name"] for g in groups]
    assert names == ["early.no_decay", "late.no_decay", "head", "head.no_decay"]


# --- BatchNorm modes ------------------------------------------------------------------------

def _bn_modes(m: Classifier, group: int) -> list[bool]:
    return [mod.training for module in m.groups[group] for mod in module.modules() if is_bn(mod)]


def test_set_bn_mode_frozen_puts_frozen_groups_in_eval():
    m = model()
    m.train()
    set_bn_mode(m, policy="frozen", first_trainable=2)
    early, late = _bn_modes(m, 0), _bn_modes(m, 1)
    assert early and late
    assert not any(early) and not any(late)
    # everything else stays in training mode
    assert m.training and m.head.training and m.head.dropout.training
    assert all(mod.training for mod in m.body.modules() if isinstance(mod, nn.Conv2d))


def test_set_bn_mode_frozen_partial():
    m = model()
    m.train()
    set_bn_mode(m, policy="frozen", first_trainable=1)
    assert not any(_bn_modes(m, 0))
    assert all(_bn_modes(m, 1))


def test_set_bn_mode_train_leaves_train_mode():
    m = model()
    m.train()
    set_bn_mode(m, policy="train", first_trainable=2)
    assert all(_bn_modes(m, 0)) and all(_bn_modes(m, 1))


def test_set_bn_mode_frozen_all():
    m = model()
    m.train()
    set_bn_mode(m, policy="frozen_all", first_trainable=0)
    assert not any(_bn_modes(m, 0)) and not any(_bn_modes(m, 1))


def test_frozen_bn_keeps_running_stats():
    m = model()
    m.train()
    set_bn_mode(m, policy="frozen", first_trainable=2)
    before = {k: v.clone() for k, v in m.state_dict().items() if "running" in k}
    with torch.no_grad():
        m(torch.rand(4, 3, 32, 32))
    after = m.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    # policy "train" does update them
    m.train()
    with torch.no_grad():
        m(torch.rand(4, 3, 32, 32))
    after = m.state_dict()
    assert any(not torch.equal(v, after[k]) for k, v in before.items())
