"""The LR range test: each suggestion rule on a curve with a known answer, and range_test on a
tiny real model (exponential rates, early stop on divergence, everything restored). The rules'
constants come from the real config (``lr_find.rules``), as the stage passes them."""
from __future__ import annotations

import inspect
import math
from typing import get_args

import numpy as np
import pytest
import torch
from torch import nn

from recipe.train.lr_find import RULES, minimum, range_test, slide, steep, suggest, valley
from recipe.train.schema import LrFindConfig, LrFindRules

torch.set_num_threads(1)

# A synthetic range-test curve: flat up to 1e-5, falling (steepest at 1e-3), lowest near 1e-1,
# then rising sharply (divergence).
LRS = np.logspace(-7, 1, 100)
_X = np.log10(LRS)
FALL_START, STEEPEST, DIVERGE = 1e-5, 1e-3, 1e-1


def _fall(x):
    return 1.5 - np.tanh((x + 3) / 0.7)


LOSS = np.where(_X < -5, _fall(-5), _fall(_X)) + 20 * np.clip(_X + 1, 0, None) ** 2


@pytest.fixture
def rules(params) -> dict:
    """lr_find.rules of the real config: suggest()'s keyword arguments."""
    return LrFindRules.model_validate(params["lr_find"]["rules"]).model_dump()


def valley_kw(rules: dict) -> dict:
    return {"sections": rules["valley_sections"], "offset": rules["valley_offset"]}


def slide_kw(rules: dict) -> dict:
    return {"lr_diff": rules["slide_lr_diff"], "thresh": rules["slide_thresh"]}


def test_curve_is_what_the_tests_assume():
    i = int(np.argmin(LOSS))
    assert 0.05 < LRS[i] <= DIVERGE
    assert LOSS[-1] > 10 * LOSS[i]
    assert np.all(LOSS[:20] == LOSS[0])


def test_steep_finds_the_steepest_fall():
    s = steep(LRS, LOSS)
    assert STEEPEST / 1.5 < s < STEEPEST * 1.5


def test_minimum_is_the_argmin_over_the_divisor():
    assert minimum(LRS, LOSS, divisor=10) == pytest.approx(LRS[int(np.argmin(LOSS))] / 10, rel=1e-12)
    assert minimum(LRS, LOSS, divisor=4) == pytest.approx(LRS[int(np.argmin(LOSS))] / 4, rel=1e-12)


@pytest.mark.parametrize("sections,offset,index", [(3, 0.0, 9), (3, 0.5, 14), (3, 1.0, 19), (2, 0.0, 14), (4, 0.5, 9)])
def test_valley_point_is_offset_into_the_second_section(sections, offset, index):
    # A loss falling at every one of 31 points: the run is the whole curve, start = end - 31 = -1,
    # a section is 31 / sections points; the point is start + int(section) + int(section * offset).
    lrs = np.logspace(-6, 0, 31)
    assert valley(lrs, np.linspace(1.0, 0.0, 31), sections=sections, offset=offset) == lrs[index]


def test_valley_is_inside_the_falling_region(rules):
    v = valley(LRS, LOSS, **valley_kw(rules))
    lowest = LRS[int(np.argmin(LOSS))]
    assert FALL_START <= v < lowest
    # past the first third of the fall, before its end: within a decade of the steepest point
    assert STEEPEST / 10 < v < STEEPEST * 10


def test_valley_ignores_a_noisy_flat_start(rules):
    rng = np.random.default_rng(0)
    loss = LOSS + np.where(_X < -5, rng.normal(0, 1e-3, len(LRS)), 0.0)
    v = valley(LRS, loss, **valley_kw(rules))
    assert FALL_START / 2 < v < LRS[int(np.argmin(loss))]


def test_slide_is_below_the_divergence(rules):
    s = slide(LRS, LOSS, **slide_kw(rules))
    assert LRS[0] <= s < DIVERGE


@pytest.mark.parametrize("lr_diff", [15, 7])
def test_slide_on_a_flat_curve_returns_the_earliest_candidate(lr_diff):
    flat = np.ones(50)
    lrs = np.logspace(-6, 0, 50)
    # gradients never differ: the rule keeps its first candidate, lr_diff points from the end
    assert slide(lrs, flat, lr_diff=lr_diff, thresh=0.005) == lrs[50 - 1 - lr_diff]


def test_slide_walks_back_while_the_gradients_differ_by_more_than_thresh():
    # Flat up to index 30, then a rise whose gradient grows by 0.01 a point: gradients 5 points
    # apart differ by 0.05 inside the rise and by less as the left one enters the flat part.
    lrs = np.logspace(-6, 0, 50)
    loss = np.concatenate([np.zeros(31), np.cumsum(np.arange(1, 20) * 0.01)])
    assert slide(lrs, loss, lr_diff=5, thresh=0.1) == lrs[49 - 5]  # never above thresh: the first candidate
    assert slide(lrs, loss, lr_diff=5, thresh=0.04) == lrs[29]  # stops at right 33 / left 28: 0.035 apart
    assert slide(lrs, loss, lr_diff=5, thresh=0.01) == lrs[26]  # stops at right 30 / left 25: 0.005 apart


def test_suggest_gives_every_rule_on_the_trimmed_curve(rules):
    s = suggest(list(LRS), list(LOSS), iterations=len(LRS), **rules)
    assert set(s) == set(RULES)
    head, tail = int(len(LRS) * rules["skip_start"]), rules["skip_end"]
    lrs, loss = LRS[head:len(LRS) - tail], LOSS[head:len(LOSS) - tail]
    assert s["steep"] == steep(lrs, loss) and s["minimum"] == minimum(lrs, loss, divisor=rules["minimum_divisor"])
    assert s["valley"] == valley(lrs, loss, **valley_kw(rules)) and s["slide"] == slide(lrs, loss, **slide_kw(rules))
    assert all(isinstance(v, float) and v > 0 for v in s.values())


@pytest.mark.parametrize("n", [None, 8])
def test_suggest_needs_min_points(rules, n):
    rules = rules if n is None else {**rules, "min_points": n}
    n = rules["min_points"]
    for short in (0, 1, n - 1):
        with pytest.raises(ValueError, match="too few"):
            suggest(list(LRS[:short]), list(LOSS[:short]), iterations=100, **rules)
    suggest(list(LRS[:n]), list(LOSS[:n]), iterations=100, **rules)


def test_suggest_takes_exactly_the_config_rules_and_no_defaults():
    """lr_find.rules is suggest()'s keyword arguments: a field without a parameter (or the
    reverse) would be a constant written in two places, or one the config cannot reach."""
    params = inspect.signature(suggest).parameters
    assert set(params) - {"lrs", "losses", "iterations"} == set(LrFindRules.model_fields)
    assert all(p.default is inspect.Parameter.empty for p in params.values())
    for rule in (valley, steep, minimum, slide):
        assert all(p.default is inspect.Parameter.empty for p in inspect.signature(rule).parameters.values())


def test_the_schema_allows_exactly_the_rules():
    assert get_args(LrFindConfig.model_fields["suggestion"].annotation) == RULES


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


def test_suggest_ignores_the_settling_start_and_the_blow_up_end(rules):
    """A plunge in the first points (the moving average settling) must not be taken as the
    steepest descent; the real descent in the middle must."""
    cfg = rules
    lrs = np.logspace(-7, 1, 100)
    x = np.log10(lrs)
    loss = 1.0 - 0.4 * np.tanh(2 * (x + 3))  # the real descent, steepest at 1e-3
    loss[:5] += np.linspace(3.0, 0.0, 5)  # settling artefact in the first 5 points
    loss[-3:] += 50.0
    rules = suggest(list(lrs), list(loss), iterations=100, **cfg)
    assert 1e-3 / 1.5 < rules["steep"] < 1e-3 * 1.5
    # without the trim the settling plunge is the steepest descent
    untrimmed = suggest(list(lrs), list(loss), iterations=100, **{**cfg, "skip_start": 0.0, "skip_end": 0})
    assert untrimmed["steep"] < lrs[5]
