"""recipe/decide/ensemble.py's guard: a bundle's members must have been trained on one class list (the
same names in the same order), since the ensemble averages their probability columns."""
from __future__ import annotations

import pytest
import torch

from recipe.core.errors import DataError
from recipe.decide.ensemble import load_bundle, save_bundle
from recipe.train.models import build_model
from recipe.train.session import save_checkpoint

CFG = {"name": "resnet18", "weights": None, "mean": [0.5] * 3, "std": [0.25] * 3,
       "head": {"pool": "avg", "dropout": 0.0, "init": "kaiming", "init_gain": 1.0, "prior_bias": False}}


def checkpoint(path, classes: list[str], seed: int = 0):
    torch.manual_seed(seed)
    m = build_model(name="resnet18", weights=None, mean=CFG["mean"], std=CFG["std"], classes=len(classes), pool="avg",
                    dropout=0.0, init="kaiming", init_gain=1.0).eval()
    return save_checkpoint(path, m, classes=classes, size=32, model_config=CFG, stage=path.stem, epoch=1, channels=1)


def test_members_on_one_class_list_make_a_bundle(tmp_path):
    a = checkpoint(tmp_path / "a.pt", ["crack", "fine"], 0)
    b = checkpoint(tmp_path / "b.pt", ["crack", "fine"], 1)
    path = save_bundle(tmp_path / "bundle.pt", [("a", a), ("b", b)], views=None, threshold=None, seed=0, info={})
    model, meta = load_bundle(path)
    assert model.classes == meta["classes"] == ["crack", "fine"] and model.names == ["a", "b"]


@pytest.mark.parametrize("other", [["fine", "crack"], ["crack", "fine", "other"]])  # reordered; one more class
def test_members_trained_on_other_class_lists_are_refused(tmp_path, other):
    a = checkpoint(tmp_path / "a.pt", ["crack", "fine"], 0)
    b = checkpoint(tmp_path / "b.pt", other, 1)
    with pytest.raises(DataError) as exc:
        save_bundle(tmp_path / "bundle.pt", [("a", a), ("b", b)], views=None, threshold=None, seed=0, info={})
    assert str(exc.value) == f"{b}: classes {other} differ from the other members' ['crack', 'fine']"
    assert not (tmp_path / "bundle.pt").exists() and not (tmp_path / "bundle.tmp").exists()


def test_one_pass_gives_the_views_and_the_plain_probabilities_of_two_passes(tmp_path):
    """evaluate scores the chosen model once: the plain probabilities come from the same pass as
    the views' (each member's first view), equal to a second pass without views."""
    from recipe.decide.ensemble import views_from
    from recipe.decide.tta import plain_views

    a = checkpoint(tmp_path / "a.pt", ["crack", "fine"], 0)
    b = checkpoint(tmp_path / "b.pt", ["crack", "fine"], 1)
    views = {"name": "flips", "scales": [1.0], "crop": 0.875, "n": 1, "beta": None, "augment": None}
    model, _ = load_bundle(save_bundle(tmp_path / "bundle.pt", [("a", a), ("b", b)], views=views, threshold=None,
                                       seed=0, info={}))
    x = torch.rand(5, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        chosen, plain = model.with_plain(x)
        assert torch.equal(chosen, model(x))
        model.views = plain_views()
        assert torch.equal(plain, model(x))
        assert not torch.allclose(plain, chosen)  # the views do change the probabilities
    assert len(views_from(views, 0)) == 4
