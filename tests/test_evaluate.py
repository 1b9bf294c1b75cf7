"""TTA views and averaging, and the metrics on hand-made predictions with known answers."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import AUGMENT_RANGES
from recipe.core import metrics as M
from recipe.core.errors import ConfigError
from recipe.data.loader import Batches
from recipe.decide import tta as T
from recipe.train.augment import Augment
from recipe.train.fit import validate


class LeftRight(nn.Module):
    """Logits [k * (mean of left half - mean of right half), 0]: a flip changes the sign."""

    def __init__(self, k: float = 6.0):
        super().__init__()
        self.k = k

    def forward(self, x):
        w = x.shape[-1] // 2
        d = x[..., :w].mean((1, 2, 3)) - x[..., w:].mean((1, 2, 3))
        return torch.stack([self.k * d + 1.0, torch.zeros_like(d)], 1)


def view_set(name, **settings):
    """A view set with conf/'s select.tta settings unless given (tta_views has no defaults)."""
    kw = dict(scales=(1.0, 1.25), crop=0.875, n=4, beta=None, augment=None, seed=0)
    return T.tta_views(name, **{**kw, **settings})


def metrics(probs, labels, classes, **settings):
    """classification_metrics with conf/'s evaluate.metrics settings unless given."""
    kw = dict(ece_bins=15, top_k=(3, 5), bootstrap=1000, confidence=0.95, seed=0)
    return M.classification_metrics(probs, labels, classes, **{**kw, **settings})


def _batches(x, y, bs=4):
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs)]


def _images(n=10, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g), torch.randint(0, 2, (n,), generator=g)


def test_identity_view_equals_plain_evaluation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    x = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 3, (10,))
    test = Batches(x, y, batch_size=4, shuffle=False, seed=0, device=torch.device("cpu"))
    out = T.predict(model, test, view_set("none"))
    assert torch.equal(out["tta"], out["plain"])
    plain = validate(model, test, loss_fn=nn.CrossEntropyLoss())
    assert torch.allclose(out["plain"].float(), plain["probs"], atol=1e-6)
    assert torch.equal(out["labels"], y)


def test_probabilities_are_averaged_not_logits():
    model = LeftRight()
    x, y = _images(12)
    x[:, :, :, :4] += 0.5  # left halves brighter: the flip moves the logit a long way
    flip = T.predict(model, _batches(x, y), view_set("flip_h"))["tta"]
    l0, l1 = model(x), model(x.flip(3))
    expected = (l0.softmax(1) + l1.softmax(1)).double() / 2
    assert torch.allclose(flip, expected, atol=1e-6)
    of_logits = ((l0 + l1) / 2).softmax(1).double()
    of_logprobs = ((l0.log_softmax(1) + l1.log_softmax(1)) / 2).softmax(1).double()
    assert (flip - of_logits).abs().max() > 0.05
    assert (flip - of_logprobs).abs().max() > 0.05


def test_beta_blends_plain_with_the_views_mean():
    model = LeftRight()
    x, y = _images(6)
    out = T.predict(model, _batches(x, y), view_set("flip_h", beta=0.25))
    p0, p1 = model(x).softmax(1).double(), model(x.flip(3)).softmax(1).double()
    assert torch.allclose(out["tta"], 0.25 * p0 + 0.75 * p1, atol=1e-6)
    assert torch.allclose(out["plain"], p0, atol=1e-6)


def test_dihedral_views_are_the_eight_symmetries():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    views = view_set("dihedral")
    assert len(views) == 8
    outs = {tuple(v(x).flatten().tolist()) for _, v in views.extra} | {tuple(x.flatten().tolist())}
    assert len(outs) == 8  # all distinct
    for _, v in views.extra:  # each is a permutation of the pixels
        assert sorted(v(x).flatten().tolist()) == list(range(16))


def test_flips_are_the_four_orientation_keeping_symmetries():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    views = view_set("flips")
    assert len(views) == 4
    got = {tuple(v(x).flatten().tolist()) for _, v in views.extra}
    assert got == {tuple(x.flip(3).flatten().tolist()), tuple(x.flip(2).flatten().tolist()),
                   tuple(x.flip(2).flip(3).flatten().tolist())}


@pytest.mark.parametrize("flip_h, flip_v, rot90, size, kept", [
    (False, False, False, 1, {"none", "multiscale"}),  # conf/'s augment none and upright: no flip or turn
    (True, False, False, 2, {"none", "flip_h", "multiscale"}),  # side_on: left-right mirrors only
    (True, True, False, 4, {"none", "flip_h", "flip_v", "flips", "multiscale"}),
    (False, False, True, 4, {"none", "multiscale"}),  # quarter turns alone: rot180 is one, but no mirror
    (True, True, True, 8, {"none", "flip_h", "flip_v", "flips", "dihedral", "multiscale"}),  # top_down (ELPV)
])
def test_view_sets_with_a_flip_or_turn_training_never_showed_are_left_out(flip_h, flip_v, rot90, size, kept):
    """select.trained_views_only: the flips and turns the augmentation generates form a group
    (its size known), and a view set survives only when all its flips and turns are in it."""
    sym = T.trained_symmetries(flip_h=flip_h, flip_v=flip_v, rot90=rot90)
    assert len(sym) == size
    names = ["none", "flip_h", "flip_v", "flips", "dihedral", "multiscale"]
    assert {n for n in names if not T.untrained_views(view_set(n), sym)} == kept
    assert T.untrained_views(view_set("flips"), T.trained_symmetries(flip_h=True, flip_v=False, rot90=False)) == [
        "flip_v", "rot180"]


def test_other_view_sets_keep_the_shape_and_are_seeded():
    x, _ = _images(3, size=16)
    ms = view_set("multiscale", scales=[1.0, 1.25, 0.75])
    assert [v(x).shape[-1] for _, v in ms.extra] == [20, 12]  # 1.0 is the plain image itself
    fc = view_set("five_crop", crop=0.75)
    assert len(fc) == 6 and all(v(x).shape == x.shape for _, v in fc.extra)
    assert not torch.allclose(fc.extra[1][1](x), fc.extra[4][1](x))  # top-left vs bottom-right crops differ
    aug = Augment(flip_h=0.5, flip_v=0.5, rot90=True, rotate=0, zoom=1, translate=0, crop_scale=1, brightness=0.1,
                  contrast=0, blur=0, noise=0, **AUGMENT_RANGES)
    a1 = view_set("augment", n=3, augment=aug, seed=5)
    a2 = view_set("augment", n=3, augment=aug, seed=5)
    assert len(a1) == 4
    assert all(torch.equal(u(x), v(x)) for (_, u), (_, v) in zip(a1.extra, a2.extra))


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="sideways"), "not one of"),
    (dict(name="multiscale", scales=[1.0]), "at least one scale"),
    (dict(name="five_crop", crop=1.0), "five_crop needs"),
    (dict(name="augment", n=2), "augment needs"),
    (dict(name="flip_h", beta=1.5), "beta"),
])
def test_bad_tta_config_is_a_one_line_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        view_set(**kwargs)


# --- metrics on hand-made predictions ---------------------------------------------------------

# Three classes, six images. Predictions (argmax): 0, 0, 1, 1, 1, 0  vs labels 0, 0, 0, 1, 1, 2.
PROBS = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1],
                  [0.1, 0.8, 0.1], [0.2, 0.5, 0.3], [0.5, 0.2, 0.3]])
LABELS = np.array([0, 0, 0, 1, 1, 2])
CLASSES = ["a", "b", "c"]


def test_confusion_and_metrics_with_known_answers():
    m = metrics(PROBS, LABELS, CLASSES, bootstrap=0, ece_bins=10, top_k=(2,))
    assert m["confusion"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    # recall: a 2/3, b 2/2, c 0/1; precision: a 2/3, b 2/3, c 0 (never predicted)
    assert m["per_class"]["a"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert m["per_class"]["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert m["per_class"]["c"] == pytest.approx({"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1})
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0) / 3)
    expected_ll = -np.mean(np.log([0.7, 0.6, 0.3, 0.8, 0.5, 0.3]))
    assert m["log_loss"] == pytest.approx(expected_ll)
    # top-2: image 5 (label c, probs .5 .2 .3) and image 2 (label a, .3 .6 .1) are in their top 2; all are
    assert m["top2_accuracy"] == pytest.approx(1.0)
    # ECE, 10 bins: confidences .7 .6 .6 .8 .5 .5 -> bins (.4,.5]: {.5 wrong? image 4 right, image 5 wrong},
    # (.5,.6]: {.6 right, .6 wrong}, (.6,.7]: {.7 right}, (.7,.8]: {.8 right}
    ece = (2 / 6) * abs(0.5 - 0.5) + (2 / 6) * abs(0.5 - 0.6) + (1 / 6) * abs(1 - 0.7) + (1 / 6) * abs(1 - 0.8)
    assert m["ece"] == pytest.approx(ece)


def test_metrics_agree_with_scikit_learn():
    from sklearn import metrics as sk  # a test dependency (pyproject.toml: test extra), never skipped
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(200, 4))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 4, 200)
    m = metrics(probs, labels, list("wxyz"), bootstrap=0, top_k=(3,))
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(labels, pred))
    assert m["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(labels, pred))
    assert m["macro_f1"] == pytest.approx(sk.f1_score(labels, pred, average="macro"))
    assert m["log_loss"] == pytest.approx(sk.log_loss(labels, probs))
    assert m["top3_accuracy"] == pytest.approx(sk.top_k_accuracy_score(labels, probs, k=3))
    assert m["confusion"] == sk.confusion_matrix(labels, pred).tolist()


def test_top_k_only_where_there_are_more_classes_than_k():
    m = metrics(PROBS, LABELS, CLASSES, bootstrap=0, top_k=(3, 5))
    assert "top3_accuracy" not in m and "top5_accuracy" not in m


def test_bootstrap_interval_is_seeded_and_brackets_the_accuracy():
    correct = np.array([1.0] * 80 + [0.0] * 20)
    a = M.bootstrap_accuracy(correct, resamples=2000, seed=3, level=0.95)
    assert a == M.bootstrap_accuracy(correct, resamples=2000, seed=3, level=0.95)
    assert a[0] < 0.8 < a[1]
    # binomial standard error sqrt(.8 * .2 / 100) = .04: the 95% interval is about +-.078
    assert a[1] - a[0] == pytest.approx(2 * 1.96 * 0.04, abs=0.02)


def test_most_confused_and_top_losses_order():
    m = np.array([[5, 3, 0], [1, 4, 2], [3, 0, 9]])
    pairs = M.most_confused(m, CLASSES, 10)
    assert [(p["actual"], p["predicted"], p["count"]) for p in pairs] == [
        ("a", "b", 3), ("c", "a", 3), ("b", "c", 2), ("b", "a", 1)]
    worst = M.top_losses(PROBS, LABELS, 3)
    # losses: -ln p(true) = .36 .51 1.20 .22 .69 1.20: images 2 and 5 tie (stable order), then 4
    assert worst.tolist() == [2, 5, 4]
    assert math.isclose(-math.log(PROBS[2, 0]), -math.log(PROBS[5, 2]))
