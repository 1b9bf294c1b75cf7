"""The LR range test: each suggestion rule on a curve with a known answer, and range_test on a
tiny real model (exponential rates, early stop on divergence, everything restored)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from recipe.lr_find import RULES, minimum, range_test, slide, steep, suggest, valley

torch.set_num_threads(1)

# A synthetic range-test curve: flat up to 1e-5, falling (steepest at 1e-3), lowest near 1e-1,
# then rising sharply (divergence).
LRS = np.logspace(-7, 1, 100)
_X = np.log10(LRS)
FALL_START, STEEPEST, DIVERGE = 1e-5, 1e-3, 1e-1


def _fall(x):
    return 1.5 - np.tanh((x + 3) / 0.7)


LOSS = np.where(_X < -5, _fall(-5), _fall(_X)) + 20 * np.clip(_X + 1, 0, None) ** 2


def test_curve_is_what_the_tests_assume():
    i = int(np.argmin(LOSS))
    assert 0.05 < LRS[i] <= DIVERGE
    assert LOSS[-1] > 10 * LOSS[i]
    assert np.all(LOSS[:20] == LOSS[0])


def test_steep_finds_the_steepest_fall():
    s = steep(LRS, LOSS)
    assert STEEPEST / 1.5 < s < STEEPEST * 1.5


def test_minimum_is_the_argmin_over_ten():
    assert minimum(LRS, LOSS) == pytest.approx(LRS[int(np.argmin(LOSS))] / 10, rel=1e-12)


def test_valley_is_inside_the_falling_region():
    v = valley(LRS, LOSS)
    lowest = LRS[int(np.argmin(LOSS))]
    assert FALL_START <= v < lowest
    # past the first third of the fall, before its end: within a decade of the steepest point
    assert STEEPEST / 10 < v < STEEPEST * 10


def test_valley_ignores_a_noisy_flat_start():
    rng = np.random.default_rng(0)
    loss = LOSS + np.where(_X < -5, rng.normal(0, 1e-3, len(LRS)), 0.0)
    v = valley(LRS, loss)
    assert FALL_START / 2 < v < LRS[int(np.argmin(loss))]


def test_slide_is_below_the_divergence():
    s = slide(LRS, LOSS)
    assert LRS[0] <= s < DIVERGE


def test_slide_on_a_flat_curve_returns_the_earliest_candidate():
    flat = np.ones(50)
    lrs = np.logspace(-6, 0, 50)
    # gradients never differ: the rule keeps its first candidate, lr_diff points from the end
    assert slide(lrs, flat) == pytest.approx(lrs[50 - 1 - 15])


def test_suggest_gives_every_rule():
    s = suggest(list(LRS), list(LOSS))
    assert set(s) == set(RULES)
    assert s["steep"] == steep(LRS, LOSS) and s["minimum"] == minimum(LRS, LOSS)
    assert s["valley"] == valley(LRS, LOSS) and s["slide"] == slide(LRS, LOSS)
    assert all(isinstance(v, float) and v > 0 for v in s.values())


@pytest.mark.parametrize("n", [0, 1, 4])
def test_suggest_needs_five_points(n):
    with pytest.raises(ValueError, match="too few"):
        suggest(list(LRS[:n]), list(LOSS[:n]))
    suggest(list(LRS[:5]), list(LOSS[:5]))


# --- range_test on a tiny model ---------------------------------------------------------------

def toy_data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return x, y


def batch_source(x, y, batch_size=16, calls=None):
    def batches(epoch):
        if calls is not None:
            calls.append(epoch)
        g = torch.Generator().manual_seed(epoch)
        order = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch_size):
            idx = order[i:i + batch_size]
            yield x[idx], y[idx]
    return batches


def test_range_test_restores_and_records_exponential_rates():
    torch.manual_seed(0)
    x, y = toy_data()
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.123, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls, modes = [], []
    curve = range_test(model, batches=batch_source(x, y, calls=calls), optimizer=opt,
                       loss_fn=nn.functional.cross_entropy, start_lr=1e-5, end_lr=1e-1, iterations=20,
                       smoothing=0.9, diverge=4.0, train_mode=lambda: modes.append(1))
    lrs = curve["lr"]
    assert len(lrs) == len(curve["loss"]) == len(curve["smoothed"]) == 20  # no divergence at these rates
    assert lrs[0] == pytest.approx(1e-5)
    assert lrs[-1] == pytest.approx(1e-1)
    ratios = np.array(lrs[1:]) / np.array(lrs[:-1])
    assert np.allclose(ratios, (1e-1 / 1e-5) ** (1 / 19))
    # bias correction: the first smoothed value is the first raw loss
    assert curve["smoothed"][0] == pytest.approx(curve["loss"][0], rel=1e-12)
    assert curve["smoothed"][1] == pytest.approx((0.1 * curve["loss"][0] * 0.9 + 0.1 * curve["loss"][1]) / (1 - 0.81))
    # 4 batches an epoch, 20 iterations: batches() is called again for epochs 1..4
    assert calls == [0, 1, 2, 3, 4]
    assert modes == [1]
    # the weights, the optimizer's rate and its (momentum) state are back to what they were
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert opt.param_groups[0]["lr"] == 0.123
    assert len(opt.state) == 0
    # and the model did train during the test (the loss moved)
    assert curve["loss"][-1] != curve["loss"][0]


def test_range_test_stops_when_the_loss_explodes():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g)
    target = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def batches(epoch):
        for i in range(0, 64, 16):
            yield x[i:i + 16], target[i:i + 16]

    curve = range_test(model, batches=batches, optimizer=opt, loss_fn=nn.functional.mse_loss, start_lr=1e-4,
                       end_lr=1e3, iterations=100, smoothing=0.9, diverge=4.0)
    n = len(curve["lr"])
    assert 5 <= n < 100, n
    assert all(math.isfinite(v) for v in curve["loss"])
    assert curve["smoothed"][-1] > 4.0 * min(curve["smoothed"])
    assert curve["lr"][-1] < 1e3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert opt.param_groups[0]["lr"] == 0.01


def test_range_test_stops_on_a_non_finite_loss():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = toy_data(32)
    x[20:] = float("inf")  # from the second batch on
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def batches(epoch):
        yield x[:16], y[:16]
        yield x[16:], y[16:]

    curve = range_test(model, batches=batches, optimizer=opt, loss_fn=nn.functional.cross_entropy, start_lr=1e-3,
                       end_lr=1.0, iterations=10, smoothing=0.9, diverge=4.0)
    assert len(curve["lr"]) == 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_range_test_keeps_group_ratios():
    torch.manual_seed(0)
    x, y = toy_data()
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.01},
                           {"params": model[2].parameters(), "lr": 0.1}], lr=0.1)
    seen = []
    step = opt.step

    def recording_step(*a, **kw):
        seen.append([g["lr"] for g in opt.param_groups])
        return step(*a, **kw)

    opt.step = recording_step
    curve = range_test(model, batches=batch_source(x, y), optimizer=opt, loss_fn=nn.functional.cross_entropy,
                       start_lr=1e-4, end_lr=1e-1, iterations=12, smoothing=0.98, diverge=4.0)
    assert len(seen) == len(curve["lr"]) == 12
    for (early, head), lr in zip(seen, curve["lr"]):
        assert head == pytest.approx(lr)  # the largest group follows the sweep
        assert early == pytest.approx(lr * 0.1)  # the others keep their ratio to it
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.1]


def test_suggest_ignores_the_settling_start_and_the_blow_up_end():
    """A plunge in the first points (the moving average settling) must not be taken as the
    steepest descent; the real descent in the middle must."""
    lrs = np.logspace(-7, 1, 100)
    x = np.log10(lrs)
    loss = 1.0 - 0.4 * np.tanh(2 * (x + 3))  # the real descent, steepest at 1e-3
    loss[:5] += np.linspace(3.0, 0.0, 5)  # settling artefact in the first 5 points
    loss[-3:] += 50.0
    rules = suggest(list(lrs), list(loss), iterations=100)
    assert 1e-3 / 1.5 < rules["steep"] < 1e-3 * 1.5
