"""Augmentation (exact symmetries, seeded warps, clamped colour changes) and the Batches that
serve it (seeded per epoch, drop_last, uint8 to [0, 1]). The draws' ranges are the real
config's (params.yaml's ``augment`` section)."""
from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
import yaml

from conftest import REPO
from recipe.core.config import validate
from recipe.core.errors import ConfigError
from recipe.data.loader import Batches
from recipe.train.augment import Augment, _blur, mix
from recipe.train.schema import AugmentConfig
from recipe.train.session import batches as session_batches

torch.set_num_threads(1)

CPU = torch.device("cpu")
RANGES = ("blur_sigma", "crop_aspect")  # set once in conf/config.yaml's augment section, for every preset
_AUGMENT = yaml.safe_load((REPO / "params.yaml").read_text())["augment"]
OFF = Augment(flip_h=0.0, flip_v=0.0, rot90=False, rotate=0.0, zoom=1.0, translate=0.0, crop_scale=1.0,
              brightness=0.0, contrast=0.0, blur=0.0, noise=0.0, **{k: tuple(_AUGMENT[k]) for k in RANGES})
TOP_DOWN = dataclasses.replace(OFF, flip_h=0.5, flip_v=0.5, rot90=True)


def images(n: int = 8, c: int = 3, side: int = 16, seed: int = 0, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, side, side, generator=g) * (hi - lo) + lo


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dihedral(img: torch.Tensor) -> list[torch.Tensor]:
    """The 8 symmetries of the square applied to one (C, H, W) image."""
    return [torch.rot90(im, k, dims=(1, 2)) for im in (img, img.flip(2)) for k in range(4)]


def test_all_off_is_identity():
    assert not OFF.active
    x = images()
    out = OFF(x, gen(0))
    assert torch.equal(out, x)


@pytest.mark.parametrize("field,value", [("flip_h", 0.5), ("flip_v", 0.5), ("rot90", True), ("rotate", 10.0),
                                         ("zoom", 1.1), ("translate", 0.1), ("crop_scale", 0.5),
                                         ("brightness", 0.1), ("contrast", 0.1), ("blur", 0.5), ("noise", 0.05)])
def test_any_single_option_makes_it_active(field, value):
    assert dataclasses.replace(OFF, **{field: value}).active


def test_top_down_gives_one_of_the_eight_symmetries_exactly():
    x = images(64, side=8)
    out = TOP_DOWN(x, gen(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    used = set()
    for i in range(len(x)):
        matches = [k for k, t in enumerate(dihedral(x[i])) if torch.equal(out[i], t)]
        assert len(matches) == 1, f"image {i} is not an exact symmetry of its input"
        used.add(matches[0])
    assert len(used) >= 6  # 64 draws over 8 symmetries: (nearly) all of them appear
    # a permutation of the pixels: the values are those of the input
    assert torch.equal(out.flatten(1).sort(1).values, x.flatten(1).sort(1).values)


def test_flips_alone():
    x = images(32, side=8)
    out = dataclasses.replace(OFF, flip_h=0.5)(x, gen(1))
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, x)]
    same = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(a or b for a, b in zip(flipped, same))
    assert 0 < sum(flipped) < 32
    always = dataclasses.replace(OFF, flip_v=1.0)(x, gen(1))
    assert torch.equal(always, x.flip(2))


def test_top_down_is_seeded():
    x = images(16)
    assert torch.equal(TOP_DOWN(x, gen(5)), TOP_DOWN(x, gen(5)))
    assert not torch.equal(TOP_DOWN(x, gen(5)), TOP_DOWN(x, gen(6)))


def test_augment_does_not_modify_its_input():
    x = images(8)
    kept = x.clone()
    for aug in (TOP_DOWN, dataclasses.replace(OFF, brightness=0.3, noise=0.1), dataclasses.replace(OFF, rotate=20.0)):
        aug(x, gen(0))
        assert torch.equal(x, kept)


WARP = dataclasses.replace(OFF, rotate=15.0, zoom=1.3, translate=0.1, crop_scale=0.5)


@pytest.mark.parametrize("aug", [WARP, dataclasses.replace(OFF, rotate=30.0), dataclasses.replace(OFF, zoom=1.5),
                                 dataclasses.replace(OFF, crop_scale=0.3)],
                         ids=["all", "rotate", "zoom", "crop_scale"])
def test_warp_keeps_shape_range_and_is_seeded(aug):
    x = images(6, c=1, side=24)
    out = aug(x, gen(3))
    assert out.shape == x.shape
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6
    assert not torch.equal(out, x)
    assert torch.equal(out, aug(x, gen(3)))
    assert not torch.equal(out, aug(x, gen(4)))


def test_warp_of_a_constant_image_is_constant():
    x = torch.full((3, 3, 16, 16), 0.25)
    out = WARP(x, gen(0))
    assert torch.allclose(out, x, atol=1e-6)


def test_warp_images_get_their_own_draws():
    x = images(1, side=16).expand(4, -1, -1, -1).contiguous()
    out = WARP(x, gen(0))
    assert not torch.equal(out[0], out[1])


def test_brightness_shifts_each_image_and_clamps():
    x = images(16)
    b = 0.3
    out = dataclasses.replace(OFF, brightness=b)(x, gen(0))
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)
    assert (out == 1).any() or (out == 0).any()  # some pixel needed the clamp
    shifts = []
    for o, i in zip(out, x):
        inside = (o > 0) & (o < 1)
        d = (o - i)[inside]
        assert d.max() - d.min() < 1e-5  # one shift per image
        assert abs(d.mean()) <= b + 1e-6
        shifts.append(d.mean().item())
    assert len({round(s, 4) for s in shifts}) > 1


def test_contrast_scales_around_the_mean():
    x = images(8, lo=0.4, hi=0.6)  # no clamping at contrast 0.5
    out = dataclasses.replace(OFF, contrast=0.5)(x, gen(0))
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)
    for o, i in zip(out, x):
        m = i.mean()
        factor = ((o - m) * (i - m)).sum() / ((i - m) ** 2).sum()
        assert 0.5 - 1e-4 <= factor <= 1.5 + 1e-4
        assert torch.allclose(o, (i - m) * factor + m, atol=1e-5)


def test_contrast_clamps():
    x = images(8)
    out = dataclasses.replace(OFF, contrast=0.9)(x, gen(0))
    assert out.min() >= 0 and out.max() <= 1


def test_noise_adds_gaussian_with_its_std_and_clamps():
    x = images(8, side=32, lo=0.3, hi=0.7)
    out = dataclasses.replace(OFF, noise=0.05)(x, gen(0))
    d = out - x
    assert d.std().item() == pytest.approx(0.05, rel=0.1)
    assert abs(d.mean().item()) < 0.005
    big = dataclasses.replace(OFF, noise=1.0)(images(4), gen(0))
    assert big.min() == 0 and big.max() == 1


def _roughness(x: torch.Tensor) -> torch.Tensor:
    """Per-image mean absolute difference between neighbouring pixels."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(1, 2, 3)) + \
        (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=(1, 2, 3))


def test_blur_smooths_and_stays_in_range():
    x = images(8)
    out = dataclasses.replace(OFF, blur=1.0)(x, gen(0))
    assert out.shape == x.shape
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6
    # sigma is uniform in [0.1, 1.5] px; near 0.1 the kernel is almost a delta
    assert (_roughness(out) <= _roughness(x) + 1e-6).all()
    assert (_roughness(out) < 0.9 * _roughness(x)).sum() >= 6
    assert torch.allclose(out.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=0.02)
    # probability 0.5: some images untouched, some blurred
    half = dataclasses.replace(OFF, blur=0.5)(images(32), gen(0))
    untouched = sum(torch.equal(h, i) for h, i in zip(half, images(32)))
    assert 0 < untouched < 32


def test_blur_sigma_is_drawn_from_its_range():
    x = images(8)
    for sigma in (0.3, 1.5):  # a range of one value: every image gets exactly that sigma
        out = dataclasses.replace(OFF, blur=1.0, blur_sigma=(sigma, sigma))(x, gen(0))
        assert torch.equal(out, _blur(x, torch.full((8,), sigma)))
    soft = dataclasses.replace(OFF, blur=1.0, blur_sigma=(0.2, 0.3))(x, gen(0))
    strong = dataclasses.replace(OFF, blur=1.0, blur_sigma=(1.4, 1.5))(x, gen(0))
    assert (_roughness(strong) < _roughness(soft)).all()


def test_crop_aspect_is_drawn_from_its_range():
    # Columns of one value each: a window of the full width (aspect >= 1, sx = 1, no shift
    # across) only stretches rows that are all alike, so the image comes back unchanged; a window
    # of half the width (aspect 1/4) stretches across the columns and changes it.
    side = 16
    x = (torch.arange(side, dtype=torch.float32) / side).expand(4, 1, side, side).contiguous()
    almost_full = dataclasses.replace(OFF, crop_scale=0.9999)  # the warp runs; the window's area is ~1
    wide = dataclasses.replace(almost_full, crop_aspect=(4.0, 4.0))(x, gen(0))
    assert torch.allclose(wide, x, atol=1e-5)
    narrow = dataclasses.replace(almost_full, crop_aspect=(0.25, 0.25))(x, gen(0))
    assert not torch.allclose(narrow, x, atol=1e-2)


def test_every_preset_takes_the_ranges_from_the_config():
    """The ranges are written once (conf/config.yaml) and merged into whichever preset is chosen;
    a preset that set them would be overridden without a word."""
    for preset in sorted((REPO / "conf" / "augment").glob("*.yaml")):
        cfg = yaml.safe_load(preset.read_text())
        assert not set(RANGES) & set(cfg), f"{preset.name} sets {set(RANGES) & set(cfg)}"
        aug = Augment(**validate("augment", {**cfg, **{k: _AUGMENT[k] for k in RANGES}}, AugmentConfig).model_dump())
        assert aug(images(4), gen(0)).shape == (4, 3, 16, 16)


@pytest.mark.parametrize("key,value", [("blur_sigma", [1.5, 0.1]), ("crop_aspect", [0.0, 1.0]),
                                       ("blur_sigma", [0.5])])
def test_a_bad_range_is_a_one_line_error_naming_the_key(key, value):
    section = {**yaml.safe_load((REPO / "conf" / "augment" / "none.yaml").read_text()),
               **{k: _AUGMENT[k] for k in RANGES}, key: value}
    with pytest.raises(ConfigError, match=rf"^augment\.{key}") as err:
        validate("augment", section, AugmentConfig)
    assert "\n" not in str(err.value)


def test_blur_of_a_constant_image_is_constant():
    x = torch.full((2, 1, 12, 12), 0.7)
    assert torch.allclose(dataclasses.replace(OFF, blur=1.0)(x, gen(0)), x, atol=1e-6)


# --- Batches --------------------------------------------------------------------------------

def labelled(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 1, 4, 4).contiguous() / n
    return x, torch.arange(n)


def collect(b: Batches, epoch: int):
    return [(x.clone(), y.clone()) for x, y in b.epoch(epoch)]


def test_batches_same_seed_and_epoch_same_batches():
    x, y = labelled(20)
    a = Batches(x, y, batch_size=6, shuffle=True, seed=3, device=CPU, augment=TOP_DOWN)
    b = Batches(x, y, batch_size=6, shuffle=True, seed=3, device=CPU, augment=TOP_DOWN)
    for (xa, ya), (xb, yb) in zip(collect(a, 2), collect(b, 2), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_batches_epochs_and_seeds_shuffle_differently():
    x, y = labelled(20)
    b = Batches(x, y, batch_size=20, shuffle=True, seed=3, device=CPU)
    orders = [collect(b, e)[0][1] for e in range(3)]
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    for o in orders:
        assert torch.equal(o.sort().values, y)  # every sample once
    other = Batches(x, y, batch_size=20, shuffle=True, seed=4, device=CPU)
    assert not torch.equal(collect(other, 0)[0][1], orders[0])


def test_batches_keep_images_with_their_labels():
    x, y = labelled(13)
    for xb, yb in Batches(x, y, batch_size=5, shuffle=True, seed=0, device=CPU).epoch(1):
        assert torch.equal(xb[:, 0, 0, 0], yb.float() / 13)


def test_batches_unshuffled_iteration_is_in_order():
    x, y = labelled(10)
    b = Batches(x, y, batch_size=4, shuffle=False, seed=0, device=CPU)
    assert torch.equal(torch.cat([yb for _, yb in b]), y)
    assert torch.equal(torch.cat([yb for _, yb in b.epoch(5)]), y)


@pytest.mark.parametrize("n,bs,drop,sizes", [(10, 4, False, [4, 4, 2]), (10, 4, True, [4, 4]), (8, 4, True, [4, 4]),
                                             (3, 4, True, [3]), (3, 4, False, [3])])
def test_batches_drop_last(n, bs, drop, sizes):
    x, y = labelled(n)
    b = Batches(x, y, batch_size=bs, shuffle=True, seed=0, device=CPU, drop_last=drop)
    assert len(b) == len(sizes)
    assert [len(yb) for _, yb in b.epoch(0)] == sizes


def test_batches_convert_uint8_to_unit_floats():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 1, 5, 5), generator=g, dtype=torch.uint8)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 0, 255
    b = Batches(x, torch.zeros(6, dtype=torch.int64), batch_size=6, shuffle=False, seed=0, device=CPU)
    (xb, _), = list(b)
    assert xb.dtype == torch.float32
    assert xb.min() == 0.0 and xb.max() == 1.0
    assert torch.allclose(xb, x.float() / 255)
    assert x.dtype == torch.uint8  # the stored tensor is left alone


def test_batches_augment_seeded_by_epoch():
    x = images(12, side=8)
    y = torch.zeros(12, dtype=torch.int64)
    b = Batches(x, y, batch_size=12, shuffle=False, seed=1, device=CPU, augment=TOP_DOWN)
    e0, e0_again, e1 = collect(b, 0)[0][0], collect(b, 0)[0][0], collect(b, 1)[0][0]
    assert torch.equal(e0, e0_again)
    assert not torch.equal(e0, e1)
    # an epoch does not depend on the ones before it
    fresh = Batches(x, y, batch_size=12, shuffle=False, seed=1, device=CPU, augment=TOP_DOWN)
    assert torch.equal(collect(fresh, 1)[0][0], e1)


def test_session_batches_drop_a_last_batch_of_one_and_skip_inactive_augment():
    x, y = labelled(9)
    train = session_batches((x, y), batch_size=4, train=True, seed=0, device=CPU, augment=OFF)
    assert train.augment is None and train.shuffle and train.drop_last
    assert [len(yb) for _, yb in train.epoch(0)] == [4, 4]
    valid = session_batches((x, y), batch_size=4, train=False, seed=0, device=CPU, augment=TOP_DOWN)
    assert valid.augment is None and not valid.shuffle and not valid.drop_last
    assert [len(yb) for _, yb in valid] == [4, 4, 1]
    aug = session_batches((x, y), batch_size=4, train=True, seed=0, device=CPU, augment=TOP_DOWN)
    assert aug.augment is TOP_DOWN


def test_mixup_blends_images_and_targets_by_one_share_and_is_seeded():
    x = torch.arange(4.0)[:, None, None, None].expand(4, 1, 6, 6).clone()  # image i is the constant i
    y = torch.arange(4)  # and of class i
    out, t = mix(x, y, torch.Generator().manual_seed(0), kind="mixup", alpha=0.4, classes=4)
    again, t2 = mix(x, y, torch.Generator().manual_seed(0), kind="mixup", alpha=0.4, classes=4)
    assert torch.equal(out, again) and torch.equal(t, t2)  # the same generator, the same batch
    assert t.shape == (4, 4) and torch.allclose(t.sum(1), torch.ones(4))
    # image i is lam * i + (1 - lam) * partner: exactly its targets' mean class
    torch.testing.assert_close(out[:, 0], (t @ torch.arange(4.0))[:, None, None].expand(4, 6, 6))
    own = t.diagonal()
    mixed = own < 1  # an image paired with itself stays itself
    assert mixed.any() and torch.allclose(own[mixed], own[mixed][0].expand(int(mixed.sum())))  # one lam per batch


def test_cutmix_pastes_one_box_whose_area_is_the_targets_share():
    x = torch.stack([torch.zeros(1, 10, 10), torch.ones(1, 10, 10)])
    y = torch.tensor([0, 1])
    shares = set()
    for seed in range(20):
        out, t = mix(x, y, torch.Generator().manual_seed(seed), kind="cutmix", alpha=1.0, classes=2)
        assert torch.allclose(t.sum(1), torch.ones(2))
        for i in range(2):
            changed = out[i, 0] != x[i, 0]
            assert float(changed.float().mean()) == pytest.approx(float(t[i, 1 - i]), abs=1e-6)
            if changed.any():  # one box: its rows and columns span exactly its pixels
                rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
                assert int(changed.sum()) == len(rows) * len(cols) == (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
                shares.add(round(float(t[i, 1 - i]), 2))
    assert len(shares) > 3  # the box's size is drawn


def test_only_the_training_stages_batches_of_images_mix():
    images = torch.rand(8, 1, 6, 6)
    y = torch.tensor([0, 1] * 4)
    mixer = functools.partial(mix, kind="mixup", alpha=0.4, classes=2)
    train = session_batches((images, y), batch_size=4, train=True, seed=0, device=torch.device("cpu"), mix=mixer)
    _, t = next(iter(train.epoch(0)))
    assert t.shape == (4, 2) and t.dtype == torch.float32
    valid = session_batches((images, y), batch_size=4, train=False, seed=0, device=torch.device("cpu"), mix=mixer)
    assert next(iter(valid))[1].dtype == torch.int64  # evaluation batches keep the labels
    features = session_batches((torch.rand(8, 5), y), batch_size=4, train=True, seed=0, device=torch.device("cpu"),
                               mix=mixer)
    assert next(iter(features.epoch(0)))[1].dtype == torch.int64  # cached feature vectors are not images
    loss = torch.nn.CrossEntropyLoss()(torch.zeros(4, 2, requires_grad=True), t)  # soft targets train
    assert torch.isfinite(loss)
