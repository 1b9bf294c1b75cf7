"""recipe.decide.engine: which engine scores a pass, and ONNX Runtime's logits against PyTorch's."""
from __future__ import annotations

import torch
from torch import nn

from recipe.decide.engine import OnnxNetwork, runner
from recipe.decide.schema import ScoringConfig


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3)).eval()


class Noisy(nn.Module):
    """Logits with noise drawn in the forward pass: ONNX Runtime draws other numbers than PyTorch."""

    def forward(self, x):
        return x.mean((2, 3)) + torch.rand(x.shape[0], 1)


def test_the_engine_of_a_pass_follows_the_config_and_the_amount_of_work():
    net, cpu = _net(), torch.device("cpu")
    cfg = lambda engine: ScoringConfig(engine=engine, onnx_min_images=1000)
    assert runner(net, cfg("torch"), device=cpu, images=10**6, side=224) is net
    assert isinstance(runner(net, cfg("onnxruntime"), device=cpu, images=1, side=8), OnnxNetwork)
    assert isinstance(runner(net, cfg("auto"), device=cpu, images=1000, side=224), OnnxNetwork)
    assert runner(net, cfg("auto"), device=cpu, images=999, side=224) is net
    # a 112 px image counts for a quarter of a 224 px one
    assert runner(net, cfg("auto"), device=cpu, images=3999, side=112) is net
    assert isinstance(runner(net, cfg("auto"), device=cpu, images=4000, side=112), OnnxNetwork)
    assert runner(net, cfg("auto"), device=torch.device("cuda"), images=10**6, side=224) is net


def test_onnx_runtime_gives_pytorchs_logits_with_a_session_per_input_shape():
    net = _net()
    ort = OnnxNetwork(net, name="net")
    with torch.no_grad():
        for shape in [(5, 1, 16, 16), (1, 1, 16, 16), (3, 1, 20, 20)]:  # a batch of one too, and another size
            x = torch.rand(*shape)
            torch.testing.assert_close(ort(x), net(x), atol=1e-5, rtol=1e-5)
    assert ort.fallback is None and sorted(ort.sessions) == [(1, 16, 16), (1, 20, 20)]


def test_a_network_onnx_runtime_does_not_reproduce_is_scored_by_pytorch_and_says_so(capsys):
    ort = OnnxNetwork(Noisy(), name="noisy")
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        ort(x)
        assert ort.fallback is not None and "differ from PyTorch" in ort.fallback and not ort.sessions
        assert "ONNX Runtime does not score noisy" in capsys.readouterr().out
        torch.manual_seed(1)
        out = ort(x)  # from now on PyTorch's own answer, and no second try
        torch.manual_seed(1)
        torch.testing.assert_close(out, Noisy()(x), atol=0, rtol=0)
    assert not ort.sessions and not capsys.readouterr().out
