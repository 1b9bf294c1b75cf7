"""Checkpoints, cached features and the BatchNorm refresh."""
from __future__ import annotations

import pytest
import torch

from recipe.core.errors import DataError
from recipe.data.loader import Batches
from recipe.train.models import build_model
from recipe.train.session import features, fingerprint, load_checkpoint, refresh_bn, save_checkpoint

CPU = torch.device("cpu")
CFG = {"name": "resnet18", "weights": None, "mean": [0.5] * 3, "std": [0.25] * 3,
       "head": {"pool": "avg", "dropout": 0.0, "init": "kaiming", "init_gain": 0.01, "prior_bias": True}}


def model():
    h = CFG["head"]
    return build_model(name=CFG["name"], weights=None, mean=CFG["mean"], std=CFG["std"], classes=2, pool=h["pool"],
                       dropout=h["dropout"], init=h["init"], init_gain=h["init_gain"], priors=[0.7, 0.3])


def test_checkpoint_round_trip_gives_the_same_outputs(tmp_path):
    m = model().eval()
    x = torch.rand(2, 1, 32, 32)
    save_checkpoint(tmp_path / "m.pt", m, classes=["a", "b"], size=32, model_config=CFG, stage="finetune", epoch=3)
    loaded, meta = load_checkpoint(tmp_path / "m.pt")
    assert meta["classes"] == ["a", "b"] and meta["size"] == 32 and meta["stage"] == "finetune"
    assert torch.equal(loaded(x), m(x))
    raw = torch.load(tmp_path / "m.pt", weights_only=True)  # plain tensors and values only
    assert raw["format"] == 1


def test_load_checkpoint_refuses_a_foreign_file(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "x.pt")
    try:
        load_checkpoint(tmp_path / "x.pt")
    except DataError as exc:
        assert "not a finetune-recipe checkpoint" in str(exc)
    else:
        raise AssertionError("accepted a foreign checkpoint")


def test_features_are_the_heads_pooled_input():
    m = model().eval()
    x = torch.randint(0, 256, (5, 1, 32, 32), dtype=torch.uint8)
    f = features(m, Batches(x, torch.zeros(5, dtype=torch.long), batch_size=2, shuffle=False, seed=0, device=CPU))
    with torch.no_grad():
        assert torch.allclose(m.head(f), m(x.float() / 255), atol=1e-5)


def test_refresh_bn_sets_running_stats_to_the_data():
    m = model()
    x = (torch.rand(64, 1, 32, 32) * 100 + 50).to(torch.uint8)  # far from the initial stats (mean 0, var 1)
    refresh_bn(m, Batches(x, torch.zeros(64, dtype=torch.long), batch_size=16, shuffle=False, seed=0, device=CPU))
    bn = m.body[1]  # the stem's BatchNorm: its input is the stem conv of the normalised images
    with torch.no_grad():
        conv = m.body[0](((x.float() / 255).expand(-1, 3, -1, -1) - m.mean) / m.std)
    assert torch.allclose(bn.running_mean, conv.mean(dim=(0, 2, 3)), atol=1e-3)
    assert bn.momentum == 0.1 and m.training  # momentum and the module's mode restored


def test_refresh_bn_runs_without_stochastic_layers():
    """Lite0's blocks drop paths at random in train mode; the refresh must not, or the statistics
    would depend on the RNG and describe a network that evaluation never runs."""
    m = build_model(name="efficientnet_lite0", weights=None, mean=[0.5] * 3, std=[0.5] * 3, classes=2, pool="avg",
                    dropout=0.2, init="kaiming", init_gain=0.01, priors=None)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8)
    data = Batches(x, torch.zeros(8, dtype=torch.long), batch_size=4, shuffle=False, seed=0, device=CPU)
    stats = []
    for seed in (0, 1):
        m.load_state_dict(state)
        torch.manual_seed(seed)
        refresh_bn(m, data)
        stats.append(m.body.net._bn1.running_var.clone())
    assert torch.equal(stats[0], stats[1])
    assert not torch.equal(stats[0], state["body.net._bn1.running_var"])


def test_fingerprint_changes_with_settings_and_file_contents(tmp_path):
    f = tmp_path / "split.csv"
    f.write_text("a")
    one = fingerprint("stage", {"lr": 1}, files=(f,))
    assert one == fingerprint("stage", {"lr": 1}, files=(f,))
    assert one != fingerprint("stage", {"lr": 2}, files=(f,))
    f.write_text("b")
    assert one != fingerprint("stage", {"lr": 1}, files=(f,))


def test_splits_share_one_channel_count(tmp_path):
    """A dataset whose valid split happens to be all grayscale while train has colour images."""
    import pandas as pd
    from PIL import Image

    from recipe.train.session import load_data

    files = tmp_path / "raw" / "files"
    files.mkdir(parents=True)
    rows = []
    for i in range(6):
        mode = "RGB" if i < 2 else "L"
        Image.new(mode, (20, 20), (i * 30,) * (3 if mode == "RGB" else 1)).save(files / f"{i}.png")
        rows.append({"path": f"{i}.png", "label": "ab"[i % 2], "split": "train" if i < 4 else "valid"})
    pd.DataFrame(rows).to_csv(tmp_path / "split.csv", index=False)
    data = load_data(tmp_path / "split.csv", tmp_path / "raw", size=16, workers=1)
    assert data.train.images.shape[1] == data.valid.images.shape[1] == 3


def _soft_split(tmp_path, columns: dict[str, list[float]]):
    import pandas as pd
    from PIL import Image

    files = tmp_path / "raw" / "files"
    files.mkdir(parents=True)
    rows = []
    for i, label in enumerate(["bad", "good", "bad", "good"]):
        Image.new("L", (8, 8), i * 40).save(files / f"{i}.png")
        rows.append({"path": f"{i}.png", "label": label, "split": "train" if i < 2 else "valid",
                     **{c: v[i] for c, v in columns.items()}})
    pd.DataFrame(rows).to_csv(tmp_path / "split.csv", index=False)
    return tmp_path / "split.csv", tmp_path / "raw"


def test_soft_targets_feed_training_batches_and_labels_feed_the_rest(tmp_path):
    from recipe.train.session import batches, load_data

    split_csv, raw = _soft_split(tmp_path, {"target_good": [0.25, 2 / 3, 0.0, 1.0]})
    data = load_data(split_csv, raw, size=8, workers=1)
    # classes are ["bad", "good"]: the column gives "good", "bad" gets the complement
    assert torch.allclose(data.train.targets, torch.tensor([[0.75, 0.25], [1 / 3, 2 / 3]]))
    assert data.train.labels.tolist() == [0, 1]
    train = batches(data.train, batch_size=2, train=True, seed=0, device=torch.device("cpu"))
    plain = batches(data.train, batch_size=2, train=False, seed=0, device=torch.device("cpu"))
    (_, y_train), = list(train.epoch(0))
    (_, y_plain), = list(plain)
    assert y_train.dtype == torch.float32 and y_train.shape == (2, 2)
    assert sorted(y_train[:, 1].tolist()) == pytest.approx([0.25, 2 / 3])
    assert y_plain.tolist() == [0, 1]


def test_soft_target_columns_that_name_no_class_are_refused(tmp_path):
    from recipe.train.session import load_data

    split_csv, raw = _soft_split(tmp_path, {"target_ugly": [0.5] * 4})
    with pytest.raises(DataError, match=r"split columns \['target_ugly'\] name no class"):
        load_data(split_csv, raw, size=8, workers=1)
