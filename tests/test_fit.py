"""The fit loop on tiny tensors: a resumed run equals an uninterrupted one, a changed fingerprint
starts over, a non-finite loss is named, early stopping keeps the best weights, seeds repeat."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import AUGMENT_RANGES
from recipe.data.loader import Batches
from recipe.train.augment import Augment
from recipe.train.fit import Diverged, _patience, fit, moving_average, validate
from recipe.train.optim import make_schedule

torch.set_num_threads(1)

CPU = torch.device("cpu")
FLIP_ONLY = Augment(flip_h=0.5, flip_v=0.0, rot90=False, rotate=0.0, zoom=1.0, translate=0.0, crop_scale=1.0,
                    brightness=0.0, contrast=0.0, blur=0.0, noise=0.0, **AUGMENT_RANGES)
KEYS = ("epoch", "train_loss", "valid_loss", "accuracy", "lr")
loss_fn = nn.functional.cross_entropy


class Stop(Exception):
    """A kill in the middle of training."""


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """8x8 one-channel images; the label says whether the top half is brighter than the bottom
    (a horizontal flip does not change it)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = (x[:, :, :4].mean(dim=(1, 2, 3)) > x[:, :, 4:].mean(dim=(1, 2, 3))).long()
    return x, y


def conv_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5),
                         nn.Linear(4 * 64, 2))


def loaders(augment=FLIP_ONLY, seed: int = 7, batch_size: int = 8):
    xt, yt = data(40, 0)
    xv, yv = data(16, 1)
    train = Batches(xt, yt, batch_size=batch_size, shuffle=True, seed=seed, device=CPU, augment=augment)
    valid = Batches(xv, yv, batch_size=batch_size, shuffle=False, seed=seed, device=CPU)
    return train, valid


def run(model_seed: int, *, epochs: int = 4, resume=None, fingerprint: str = "x", on_epoch=None, keep="best",
        patience=None, schedule: str = "onecycle", watch=None, ema: float | None = None):
    """A fresh model, optimizer and schedule, then fit; returns (model, history)."""
    torch.manual_seed(model_seed)
    model = conv_net()
    train, valid = loaders()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if schedule == "onecycle":
        sched = make_schedule(opt, name="onecycle", epochs=epochs, steps_per_epoch=len(train), pct_start=0.25,
                              div_factor=25.0, final_div_factor=1e4, cycle_momentum=True)
    else:
        sched = make_schedule(opt, name=schedule, epochs=epochs, steps_per_epoch=len(train))
    # the global RNG (dropout) continues from here in both runs
    torch.manual_seed(1234)
    average = None if ema is None else moving_average(model, epochs=ema, steps_per_epoch=len(train))
    history = fit(model, train=train, valid=valid, epochs=epochs, optimizer=opt, schedule=sched, loss_fn=loss_fn,
                  resume=resume, fingerprint=fingerprint, on_epoch=on_epoch, keep=keep, patience=patience,
                  watch=watch, average=average)
    if average is not None:
        return model, history, average.module
    return model, history


def rows(history):
    return [{k: r[k] for k in KEYS} for r in history]


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resumed_run_equals_uninterrupted(tmp_path):
    full_model, full = run(0, resume=tmp_path / "a.pt")
    assert [r["epoch"] for r in full] == [0, 1, 2, 3]

    def kill(row):
        if row["epoch"] == 2:  # on_epoch runs before the resume state is written: epochs 0, 1 saved
            raise Stop

    with pytest.raises(Stop):
        run(0, resume=tmp_path / "b.pt", on_epoch=kill)
    state = torch.load(tmp_path / "b.pt", weights_only=True)
    assert state["epoch"] == 2 and not state["done"]

    seen = []
    # a different init: the weights must come from the resume file
    resumed_model, resumed = run(99, resume=tmp_path / "b.pt", on_epoch=lambda r: seen.append(r["epoch"]))
    assert seen == [2, 3]
    assert rows(resumed) == rows(full)
    assert same_weights(resumed_model, full_model)


def test_the_moving_average_is_polyaks_after_every_step():
    """A weight that SGD moves by exactly -lr every step (its gradient is 1): after n steps it is
    w0 - n lr, and the average (decay d = 1 - 1/(epochs x steps), seeded with the first step's
    weight) is e_1 = w_1, e_t = d e_(t-1) + (1 - d) w_t."""
    w = nn.Parameter(torch.zeros(()))

    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = w

        def forward(self, x):
            return self.w * torch.ones(len(x), 2)

    model = Constant()
    train, valid = loaders(augment=None)  # 40 images in batches of 8: 5 steps an epoch
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    average = moving_average(model, epochs=2, steps_per_epoch=len(train))
    fit(model, train=train, valid=valid, epochs=3, optimizer=opt, keep="last", average=average,
        schedule=make_schedule(opt, name="constant", epochs=3, steps_per_epoch=len(train)),
        loss_fn=lambda logits, y: logits[:, 0].mean())
    d = 1 - 1 / 10
    e = -0.1
    for t in range(2, 16):
        e = d * e + (1 - d) * (-0.1 * t)
    assert float(w) == pytest.approx(-1.5)
    assert float(average.module.w) == pytest.approx(e, rel=1e-5) and e > -1.5 + 0.5  # it lags the weight


def test_a_resumed_run_has_the_same_moving_average(tmp_path):
    full, _, full_average = run(0, resume=tmp_path / "a.pt", ema=1.0)

    def kill(row):
        if row["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        run(0, resume=tmp_path / "b.pt", on_epoch=kill, ema=1.0)
    resumed, _, resumed_average = run(99, resume=tmp_path / "b.pt", ema=1.0)
    assert same_weights(resumed, full) and same_weights(resumed_average, full_average)
    assert not same_weights(full_average, full)  # an average, not the last weights


def test_a_resumed_run_keeps_every_batchs_rates_and_the_watched_probabilities(tmp_path):
    """What lr_schedule.csv and dynamics.csv are written from survives a kill: the restored epochs'
    rows come back whole, none twice, and equal an uninterrupted run's."""
    _, full = run(0, resume=tmp_path / "a.pt", watch=[1, 5])

    def kill(row):
        if row["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        run(0, resume=tmp_path / "b.pt", on_epoch=kill, watch=[1, 5])
    _, resumed = run(99, resume=tmp_path / "b.pt", watch=[1, 5])
    assert [r["epoch"] for r in resumed] == [0, 1, 2, 3]
    assert [r["rates"] for r in resumed] == [r["rates"] for r in full] and len(full[0]["rates"]) == 5
    assert [r["watched"] for r in resumed] == [r["watched"] for r in full]


def test_model_seed_changes_the_run():
    """The control for the test above: a second model seed does give other numbers when not resumed."""
    _, a = run(0)
    _, b = run(99)
    assert rows(a) != rows(b)


def test_finished_resume_state_returns_history_and_final_weights(tmp_path):
    model, history = run(0, resume=tmp_path / "a.pt")
    calls = []
    again_model, again = run(5, resume=tmp_path / "a.pt", on_epoch=calls.append)
    assert calls == []  # nothing trained
    assert rows(again) == rows(history)
    assert same_weights(again_model, model)


def test_other_fingerprint_starts_over(tmp_path):
    _, history = run(0, resume=tmp_path / "a.pt", fingerprint="x")
    seen = []
    model, fresh = run(0, resume=tmp_path / "a.pt", fingerprint="y", on_epoch=lambda r: seen.append(r["epoch"]))
    assert seen == [0, 1, 2, 3]
    assert [r["epoch"] for r in fresh] == [0, 1, 2, 3]
    assert rows(fresh) == rows(history)  # same seeds from scratch: the same run again
    assert torch.load(tmp_path / "a.pt", weights_only=True)["fingerprint"] == "y"


def test_interrupted_state_with_other_fingerprint_is_not_resumed(tmp_path):
    def kill(row):
        if row["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        run(0, resume=tmp_path / "b.pt", fingerprint="x", on_epoch=kill)
    seen = []
    run(0, resume=tmp_path / "b.pt", fingerprint="y", on_epoch=lambda r: seen.append(r["epoch"]))
    assert seen == [0, 1, 2, 3]


def test_same_seed_same_history():
    a_model, a = run(3)
    b_model, b = run(3)
    assert rows(a) == rows(b)
    assert same_weights(a_model, b_model)
    assert len(a) == 4 and all(set(KEYS) | {"time", "rates"} == set(r) for r in a)


def test_history_lr_is_the_rate_trained_at():
    _, history = run(0, schedule="constant")
    assert [r["lr"] for r in history] == [0.1] * 4


# --- what a row carries for the pictures: rates per batch, watched images, the L1 term --------

def test_rates_hold_every_groups_rate_at_every_batch():
    """Two groups at 0.1 and 0.01 under OneCycle: one dict per batch, each group's own rate, the
    ``.no_decay`` half folded into its group, and the first batch at max_lr / div_factor."""
    torch.manual_seed(0)
    model = conv_net()
    train, valid = loaders()
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.01, "name": "early"},
                           {"params": [model[4].weight], "lr": 0.1, "name": "head"},
                           {"params": [model[4].bias], "lr": 0.1, "name": "head.no_decay"}], lr=0.1)
    sched = make_schedule(opt, name="onecycle", epochs=2, steps_per_epoch=len(train), pct_start=0.25,
                          div_factor=25.0, final_div_factor=1e4, cycle_momentum=False)
    history = fit(model, train=train, valid=valid, epochs=2, optimizer=opt, schedule=sched, loss_fn=loss_fn)
    rates = [r for row in history for r in row["rates"]]
    assert len(rates) == 2 * len(train) and all(set(r) == {"early", "head"} for r in rates)
    assert rates[0]["head"] == pytest.approx(0.1 / 25) and rates[0]["early"] == pytest.approx(0.01 / 25)
    assert max(r["head"] for r in rates) == pytest.approx(0.1, rel=0.02)  # the peak falls between batches
    assert all(r["head"] == pytest.approx(10 * r["early"]) for r in rates)
    assert history[-1]["lr"] == rates[-1]["head"]


def test_watched_is_each_watched_images_probability_of_its_true_class():
    torch.manual_seed(0)
    model = conv_net()
    train, valid = loaders()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = make_schedule(opt, name="constant", epochs=2, steps_per_epoch=len(train))
    watch = [0, 3, 11]
    history = fit(model, train=train, valid=valid, epochs=2, optimizer=opt, schedule=sched, loss_fn=loss_fn,
                  watch=watch, keep="last")
    probs = validate(model, valid, loss_fn=loss_fn)["probs"]
    expected = [probs[i, valid.y[i]].item() for i in watch]
    assert len(history[-1]["watched"]) == 3
    assert history[-1]["watched"] == pytest.approx(expected, abs=1e-6)
    assert history[0]["watched"] != history[-1]["watched"]  # it moved with training


def test_l1_adds_exactly_lambda_times_the_weights_l1_norm_to_the_loss():
    """With lr 0 nothing moves: the logged l1_loss is l1 * sum|w| over the group that carries
    ``l1`` (not over the group without it), and the gradient it adds is l1 * sign(w)."""
    from recipe.train.fit import l1_penalty
    torch.manual_seed(0)
    model = conv_net()
    train, valid = loaders(augment=None)
    weights, rest = [model[0].weight, model[4].weight], [model[0].bias, model[4].bias]
    opt = torch.optim.SGD([{"params": weights, "lr": 0.0, "l1": 1e-3, "name": "w"},
                           {"params": rest, "lr": 0.0, "l1": 0.0, "name": "w.no_decay"}], lr=0.0)
    sched = make_schedule(opt, name="constant", epochs=1, steps_per_epoch=len(train))
    history = fit(model, train=train, valid=valid, epochs=1, optimizer=opt, schedule=sched, loss_fn=loss_fn,
                  keep="last")
    expected = 1e-3 * sum(p.abs().sum().item() for p in weights)
    assert history[0]["l1_loss"] == pytest.approx(expected, rel=1e-6)
    model.zero_grad()
    l1_penalty([(1e-3, weights)]).backward()
    assert torch.allclose(model[0].weight.grad, 1e-3 * model[0].weight.sign())
    # no l1 anywhere: no term, no column
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    history = fit(model, train=train, valid=valid, epochs=1, optimizer=opt,
                  schedule=make_schedule(opt, name="constant", epochs=1, steps_per_epoch=len(train)), loss_fn=loss_fn)
    assert "l1_loss" not in history[0]


def test_l1_moves_the_weights_toward_zero():
    """Same seed and data, with and without L1: the L1 run ends with a smaller sum|w|."""
    def final_norm(l1):
        torch.manual_seed(0)
        model = conv_net()
        train, valid = loaders(augment=None)
        opt = torch.optim.SGD([{"params": [model[0].weight, model[4].weight], "lr": 0.05, "l1": l1},
                               {"params": [model[0].bias, model[4].bias], "lr": 0.05}], lr=0.05)
        sched = make_schedule(opt, name="constant", epochs=3, steps_per_epoch=len(train))
        torch.manual_seed(1)
        fit(model, train=train, valid=valid, epochs=3, optimizer=opt, schedule=sched, loss_fn=loss_fn, keep="last")
        return sum(p.abs().sum().item() for p in (model[0].weight, model[4].weight))
    assert final_norm(0.01) < 0.9 * final_norm(0.0)


# --- divergence -------------------------------------------------------------------------------

def test_non_finite_loss_raises_diverged_naming_epoch_step_and_lr():
    torch.manual_seed(0)
    model = conv_net()
    x, y = data(16, 0)
    x[9] = float("inf")  # in the second batch of 4 (no shuffling)
    train = Batches(x, y, batch_size=4, shuffle=False, seed=0, device=CPU)
    valid = Batches(*data(8, 1), batch_size=4, shuffle=False, seed=0, device=CPU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = make_schedule(opt, name="constant", epochs=2, steps_per_epoch=len(train))
    with pytest.raises(Diverged) as info:
        fit(model, train=train, valid=valid, epochs=2, optimizer=opt, schedule=sched, loss_fn=loss_fn)
    msg = str(info.value)
    assert "epoch 0" in msg and "step 2" in msg and "lr 0.05" in msg
    assert "nan" in msg or "inf" in msg


def test_huge_lr_raises_diverged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    train, valid = loaders(augment=None)
    opt = torch.optim.SGD(model.parameters(), lr=1e38)
    sched = make_schedule(opt, name="constant", epochs=3, steps_per_epoch=len(train))
    with pytest.raises(Diverged, match=r"epoch \d+, step \d+ \(lr 1e\+38\)"):
        fit(model, train=train, valid=valid, epochs=3, optimizer=opt, schedule=sched, loss_fn=loss_fn)


# --- early stopping and keep ----------------------------------------------------------------

def anti_learning_setup(epochs: int, **extra):
    """Valid = the training images with every label flipped: the better the model learns the
    training set, the worse its valid loss, so epoch 0 is the best. Returns the model and fit's
    keyword arguments."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    x, y = data(32, 0)
    train = Batches(x, y, batch_size=8, shuffle=True, seed=0, device=CPU)
    valid = Batches(x, 1 - y, batch_size=8, shuffle=False, seed=0, device=CPU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = make_schedule(opt, name="constant", epochs=epochs, steps_per_epoch=len(train))
    return model, dict(train=train, valid=valid, epochs=epochs, optimizer=opt, schedule=sched, loss_fn=loss_fn,
                       **extra)


def anti_learning(keep: str, patience, epochs: int = 8):
    model, kw = anti_learning_setup(epochs, patience=patience, keep=keep)
    return model, kw["valid"], fit(model, **kw)


def test_early_stopping_stops_when_valid_loss_never_improves():
    _, _, history = anti_learning("best", patience=1)
    losses = [r["valid_loss"] for r in history]
    assert len(history) < 8
    assert len(history) == 2  # epoch 0 best, epoch 1 worse: patience 1 spent
    assert losses[1] > losses[0]


def test_early_stopping_at_cycle_ends_waits_for_the_end_of_a_cycle():
    """stop_at (train.stop_at: cycle_end, SGDR's cycle ends): epoch 0 is the best, so patience 3
    is spent after epoch 3; judged every epoch the fit stops there, judged at the cycle ends
    (0, 2, 6, 7) it goes on to epoch 6, and the best epoch's weights are restored either way."""
    model, kw = anti_learning_setup(8, patience=3, keep="best", stop_at=(0, 2, 6, 7))
    history = fit(model, **kw)
    assert len(history) == 7
    assert validate(model, kw["valid"], loss_fn=loss_fn)["loss"] == pytest.approx(history[0]["valid_loss"], abs=1e-6)
    model, kw = anti_learning_setup(8, patience=3, keep="best")
    assert len(fit(model, **kw)) == 4


def test_whole_cycles_wait_for_a_cycle_that_brought_nothing():
    """train.stop_at: cycle. SGDR's cycle ends at epochs 0, 2, 6, 14, 30 (cycles of 1, 2, 4, 8, 16
    epochs), patience 3. The long-tailed digits' finetune lowered its valid loss last at epoch 3, the
    first epoch of the cycle that ends at 6: three epochs without a lower loss stop it there at its
    cycle's end, though that cycle did lower it; with whole cycles it needs four, and it goes on
    (it lowered the loss again at epoch 11). A cycle shorter than patience still waits patience."""
    ends = (0, 2, 6, 14, 30)
    assert [_patience(3, e, ends, False) for e in ends] == [3, 3, 3, 3, 3]
    assert [_patience(3, e, ends, True) for e in ends] == [3, 3, 4, 8, 16]
    assert _patience(3, 6, None, True) == 3  # no cycles: patience alone
    bad = 6 - 3  # after epoch 6, epochs since the best (epoch 3)
    assert bad >= _patience(3, 6, ends, False) and bad < _patience(3, 6, ends, True)


def test_without_patience_all_epochs_run():
    _, _, history = anti_learning("best", patience=None)
    assert len(history) == 8


def test_keep_best_restores_best_epoch_weights():
    model, valid, history = anti_learning("best", patience=None)
    best = min(r["valid_loss"] for r in history)
    assert history[-1]["valid_loss"] > best  # the last epoch is not the best one
    assert validate(model, valid, loss_fn=loss_fn)["loss"] == pytest.approx(best, abs=1e-6)


def test_keep_best_after_early_stop():
    model, valid, history = anti_learning("best", patience=2)
    assert len(history) == 3
    assert validate(model, valid, loss_fn=loss_fn)["loss"] == pytest.approx(history[0]["valid_loss"], abs=1e-6)


def test_keep_last_keeps_last_weights():
    model, valid, history = anti_learning("last", patience=None)
    assert validate(model, valid, loss_fn=loss_fn)["loss"] == pytest.approx(history[-1]["valid_loss"], abs=1e-6)


def test_keep_best_survives_resume(tmp_path):
    """Interrupted after the best epoch, the resumed run still ends on the best weights."""
    def make():
        return anti_learning_setup(5, resume=tmp_path / "r.pt", fingerprint="f")

    def kill(row):
        if row["epoch"] == 3:
            raise Stop

    model, kw = make()
    with pytest.raises(Stop):
        fit(model, on_epoch=kill, **kw)
    model, kw = make()
    history = fit(model, **kw)
    assert len(history) == 5
    best = min(r["valid_loss"] for r in history)
    assert best == history[0]["valid_loss"]
    assert validate(model, kw["valid"], loss_fn=loss_fn)["loss"] == pytest.approx(best, abs=1e-6)


def test_starting_weights_are_kept_when_no_epoch_beats_them():
    """start_loss: the weights a phase starts from count as a candidate for keep="best"."""
    model, kw = anti_learning_setup(3, keep="best")
    start = validate(model, kw["valid"], loss_fn=loss_fn)["loss"]
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    history = fit(model, start_loss=start, **kw)
    assert min(r["valid_loss"] for r in history) > start  # every epoch made it worse
    assert all(torch.equal(v, initial[k]) for k, v in model.state_dict().items())
    model, kw = anti_learning_setup(3, keep="best")
    fit(model, **kw)  # without start_loss the best epoch (0) wins, not the start
    assert not all(torch.equal(v, initial[k]) for k, v in model.state_dict().items())


def test_evaluate_restores_training_mode_and_counts():
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 2))
    model.train()
    x, y = data(10, 0)
    result = validate(model, Batches(x, y, batch_size=4, shuffle=False, seed=0, device=CPU), loss_fn=loss_fn)
    assert model.training
    assert result["probs"].shape == (10, 2)
    assert torch.allclose(result["probs"].sum(1), torch.ones(10))
    with torch.no_grad():
        logits = model.eval()(x)
    assert result["loss"] == pytest.approx(loss_fn(logits, y).item(), rel=1e-5)
    assert result["accuracy"] == pytest.approx((logits.argmax(1) == y).float().mean().item())


def test_soft_targets_train_toward_the_target_distribution():
    """With targets [0.7, 0.3] on every image, the softmax should settle at 0.7 (cross-entropy's
    minimum), where the hard label would push it toward 1; valid stays on the hard labels."""
    x = torch.zeros(64, 1, 4, 4)
    soft = torch.tensor([[0.7, 0.3]]).expand(64, -1).contiguous()
    hard = torch.zeros(64, dtype=torch.long)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    train = Batches(x, soft, batch_size=16, shuffle=True, seed=0, device=CPU)
    valid = Batches(x, hard, batch_size=16, shuffle=False, seed=0, device=CPU)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    rows = fit(net, train=train, valid=valid, epochs=30, optimizer=opt, keep="last", loss_fn=loss_fn,
               schedule=make_schedule(opt, name="constant", epochs=30, steps_per_epoch=len(train)))
    p = net(x[:1]).softmax(1)[0, 0].item()
    assert p == pytest.approx(0.7, abs=0.01)
    assert rows[-1]["accuracy"] == 1.0  # argmax 0 on every valid image
    assert rows[-1]["valid_loss"] == pytest.approx(-torch.log(torch.tensor(0.7)).item(), abs=0.02)
