"""Audit: every index entry gets one manifest row with the right issues, keep flag and group;
too-small images and size outliers are named and handled by their policy; the report counts
what is kept; check_usable stops a run the data cannot support; and the
near-duplicate search finds exactly the pairs a brute-force comparison finds."""
from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from recipe.core.errors import DataError
from recipe.data.audit import audit, check_usable, metrics_of
from recipe.data.neardup import group_ids, hamming, near_pairs

AUDIT = dict(drop_exact_duplicates=True, conflicting_labels="drop", near_dup_bits=4, max_pixels=89478485,
             min_side=16, too_small="drop", size_outlier_factor=10.0, size_outliers="keep", min_per_class=3,
             stats_max_side=256, workers=1)


def run(raw: Path, **overrides) -> tuple[pd.DataFrame, dict]:
    return audit(raw=raw, **{**AUDIT, **overrides})


def noise(seed: int) -> np.ndarray:
    """32x32 RGB noise upscaled to 64x64: unrelated seeds are far apart in pHash. Values stay
    below 250 so a +3 brightening never clips."""
    small = np.random.default_rng(seed).integers(0, 250, (32, 32, 3), dtype=np.uint8)
    return np.kron(small, np.ones((2, 2, 1), np.uint8))


def bomb_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def make_raw(raw: Path, entries: list[tuple], classes: list[str] | None = None) -> Path:
    """Write the ingest layout. Each entry is ``(path, label, content)`` or
    ``(path, label, content, ingest_issue)``; content is an array (saved in the format the
    suffix names), bytes (written as is) or None (no file)."""
    rows = []
    for path, label, content, *issue in entries:
        dst = raw / "files" / path
        dst.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, np.ndarray):
            Image.fromarray(content).save(dst, **({"quality": 95} if dst.suffix == ".jpg" else {}))
        elif isinstance(content, bytes):
            dst.write_bytes(content)
        rows.append({"path": path, "label": label, "origin": path, "ingest_issue": issue[0] if issue else ""})
    pd.DataFrame(rows, columns=["path", "label", "origin", "ingest_issue"]).to_csv(raw / "index.csv", index=False)
    declared = classes if classes is not None else sorted({r["label"] for r in rows if r["label"]})
    (raw / "ingest.json").write_text(json.dumps({"source": "test", "classes": declared}))
    return raw


@pytest.fixture
def messy(tmp_path) -> Path:
    """Three classes plus a declared empty one, with every kind of problem the audit names."""
    raw = tmp_path / "raw"
    buf = io.BytesIO()
    Image.fromarray(noise(99)).save(buf, "PNG")
    truncated = buf.getvalue()[: len(buf.getvalue()) * 2 // 3]
    entries = [
        *[(f"cat/c{i}.png", "cat", noise(i)) for i in range(4)],
        ("cat/c0_copy.png", "cat", noise(0)),  # exact duplicate, same label
        ("cat/c3.jpg", "cat", noise(3)),  # near duplicate: re-encoded
        *[(f"dog/d{i}.png", "dog", noise(10 + i)) for i in range(4)],
        ("dog/d0_bright.png", "dog", noise(10) + 3),  # near duplicate: brightened
        ("dog/d_conflict.png", "dog", noise(1)),  # exact duplicate of cat/c1.png, other label
        ("bird/b0.png", "bird", noise(20)),  # the only bird
        ("cat/tiny.png", "cat", np.random.default_rng(40).integers(0, 256, (4, 4, 3), dtype=np.uint8)),  # 4x4
        ("dog/huge.png", "dog", np.kron(noise(41), np.ones((4, 4, 1), np.uint8))),  # 256x256: 16x the median area
        ("cat/zero.png", "cat", b""),
        ("cat/cut.png", "cat", truncated),
        ("dog/text.jpg", "dog", b"not an image at all\n" * 20),
        ("dog/bomb.png", "dog", bomb_png()),
        ("cat/gone.png", "cat", None),  # listed, but the file is missing
        ("dog/escape.png", "dog", None, "path_outside_root"),
        ("stray.png", "", None, "no_label"),  # ingest lists, but does not copy, an unlabelled file
    ]
    make_raw(raw, entries, classes=["bird", "cat", "dog", "fish"])
    # Make the escaping entry real: a link in files/ to a valid image outside the raw folder.
    outside = tmp_path / "outside" / "secret.png"
    outside.parent.mkdir()
    Image.fromarray(noise(30)).save(outside)
    (raw / "files" / "dog" / "escape.png").symlink_to(outside)
    return raw


def row(m: pd.DataFrame, path: str) -> pd.Series:
    hit = m[m["path"] == path]
    assert len(hit) == 1, path
    return hit.iloc[0]


def issues(m: pd.DataFrame, path: str) -> set[str]:
    return set(filter(None, row(m, path)["issues"].split(";")))


def test_manifest_has_one_row_per_index_entry(messy):
    m, report = run(messy)
    index = pd.read_csv(messy / "index.csv", keep_default_na=False)
    assert list(m.columns[:5]) == ["path", "label", "keep", "issues", "group"]
    assert list(m["path"]) == list(index["path"]) and m["path"].is_unique
    assert list(m["label"]) == list(index["label"])
    assert report["entries"] == len(index) and report["kept"] + report["dropped"] == len(index)


@pytest.mark.parametrize("path, issue", [
    ("cat/zero.png", "zero_byte"),
    ("cat/cut.png", "truncated_or_corrupt"),
    ("dog/text.jpg", "not_image"),
    ("dog/bomb.png", "decompression_bomb"),
    ("cat/gone.png", "missing_file"),
    ("dog/escape.png", "path_outside_root"),
])
def test_unusable_entries_are_dropped_and_named(messy, path, issue):
    m, report = run(messy)
    assert issues(m, path) == {issue}
    assert not row(m, path)["keep"]
    assert row(m, path)["group"] == -1
    assert report["issues"][issue] == 1
    assert report["unreadable"] == 6
    assert metrics_of(report)[f"issues.{issue}"] == 1.0


def test_unlabelled_entry_is_dropped_but_not_unreadable(messy):
    m, report = run(messy)
    assert issues(m, "stray.png") == {"no_label"} and not row(m, "stray.png")["keep"]
    assert report["issues"]["no_label"] == 1
    assert report["unreadable"] == 6  # the six unreadable entries above; a missing label is not one
    assert "" not in report["classes"]


def test_exact_duplicate_same_label(messy):
    m, _ = run(messy)
    assert issues(m, "cat/c0.png") == set() and row(m, "cat/c0.png")["keep"]
    assert issues(m, "cat/c0_copy.png") == {"exact_duplicate"} and not row(m, "cat/c0_copy.png")["keep"]
    assert row(m, "cat/c0.png")["group"] == row(m, "cat/c0_copy.png")["group"]

    m, _ = run(messy, drop_exact_duplicates=False)
    assert row(m, "cat/c0.png")["keep"] and row(m, "cat/c0_copy.png")["keep"]
    assert row(m, "cat/c0.png")["group"] == row(m, "cat/c0_copy.png")["group"] >= 0


def test_exact_duplicate_conflicting_label(messy):
    pair = ("cat/c1.png", "dog/d_conflict.png")
    m, report = run(messy)
    for p in pair:
        assert "conflicting_label" in issues(m, p) and not row(m, p)["keep"]
    assert report["issues"]["conflicting_label"] == 2

    m, _ = run(messy, conflicting_labels="keep", drop_exact_duplicates=False)
    assert all(row(m, p)["keep"] for p in pair)
    assert "conflicting_label" in issues(m, pair[0])
    m, _ = run(messy, conflicting_labels="keep")  # the copy still goes as an exact duplicate
    assert row(m, pair[0])["keep"] and not row(m, pair[1])["keep"]


@pytest.mark.parametrize("original, near", [("cat/c3.png", "cat/c3.jpg"), ("dog/d0.png", "dog/d0_bright.png")])
def test_near_duplicates_share_a_group(messy, original, near):
    m, report = run(messy)
    for p in (original, near):
        assert issues(m, p) == {"near_duplicate"} and row(m, p)["keep"]
    assert row(m, original)["group"] == row(m, near)["group"] >= 0
    assert report["issues"]["near_duplicate"] == 4 and report["near_duplicate_groups"] == 2
    # Unrelated images are not near duplicates of anything, and each has a group of its own.
    unrelated = ["cat/c2.png", "dog/d1.png", "dog/d2.png", "bird/b0.png", original]
    assert all(issues(m, p) == set() for p in unrelated[:-1])
    assert len({row(m, p)["group"] for p in unrelated}) == len(unrelated)


def test_report_counts_kept_images_per_class(messy):
    _, report = run(messy)
    # cat: c0, c2, c3, c3.jpg (c1 conflicts, c0_copy duplicates, tiny is too small); dog: d0-d3,
    # d0_bright, huge (a size outlier, kept); bird: b0.
    assert report["classes"] == {"bird": 1, "cat": 4, "dog": 6, "fish": 0}
    assert report["empty_classes"] == ["fish"]
    assert report["single_image_classes"] == ["bird"]
    assert report["small_classes"] == ["bird"]
    assert report["num_classes"] == 3
    assert report["imbalance_ratio"] == pytest.approx(6.0)
    assert report["kept"] == 11
    assert report["exact_duplicate_groups"] == 2


def test_too_small_image_is_dropped_and_named(messy):
    m, report = run(messy)
    assert issues(m, "cat/tiny.png") == {"too_small", "size_outlier"}  # 16 px of area against a median of 4096
    assert not row(m, "cat/tiny.png")["keep"] and row(m, "cat/tiny.png")["group"] == -1
    assert report["issues"]["too_small"] == 1 and report["unreadable"] == 6  # dropped, but not unreadable
    assert metrics_of(report)["issues.too_small"] == 1.0

    m, report = run(messy, too_small="keep")
    assert row(m, "cat/tiny.png")["keep"] and row(m, "cat/tiny.png")["group"] >= 0
    assert report["issues"]["too_small"] == 1 and report["kept"] == 12


@pytest.mark.parametrize("min_side, flagged", [(4, set()), (5, {"cat/tiny.png"}), (64, {"cat/tiny.png"})])
def test_min_side_is_the_smallest_side_allowed(messy, min_side, flagged):
    m, _ = run(messy, min_side=min_side)
    assert {p for p in m["path"] if "too_small" in issues(m, p)} == flagged


def test_size_outlier_is_named_and_kept(messy):
    m, report = run(messy)
    assert issues(m, "dog/huge.png") == {"size_outlier"} and row(m, "dog/huge.png")["keep"]
    # Only the 4x4 and the 256x256 image are far from the 64x64 median; unreadable files are not sized.
    assert {p for p in m["path"] if "size_outlier" in issues(m, p)} == {"cat/tiny.png", "dog/huge.png"}
    assert report["issues"]["size_outlier"] == 2
    assert report["size_outlier_area"] == {"below": 409.6, "above": 40960.0}

    m, _ = run(messy, size_outlier_factor=20.0)  # 16x the median is within 20x
    assert issues(m, "dog/huge.png") == set()
    m, report = run(messy, size_outliers="drop")
    assert not row(m, "dog/huge.png")["keep"] and report["kept"] == 10


def test_channel_mean_and_std_match_hand_computation(tmp_path):
    colours = {  # path: (colour, (w, h))
        "a/red.png": ((255, 0, 0), (10, 10)),
        "a/teal.png": ((0, 128, 255), (20, 10)),
        "b/grey.png": ((64, 64, 64), (5, 5)),
        "b/olive.png": ((120, 200, 30), (8, 12)),
    }
    entries = [(p, p.split("/")[0], np.full((h, w, 3), c, np.uint8)) for p, (c, (w, h)) in colours.items()]
    # A conflicting copy (dropped) must not count in the statistics.
    entries.append(("b/red_again.png", "b", np.full((10, 10, 3), (255, 0, 0), np.uint8)))
    _, report = run(make_raw(tmp_path / "raw", entries), min_side=1)
    assert report["kept"] == 3
    pixels = np.concatenate([
        np.tile(np.array(c, float) / 255, (w * h, 1))
        for p, (c, (w, h)) in colours.items() if p != "a/red.png"
    ])
    np.testing.assert_allclose(report["channel_mean"], pixels.mean(0), atol=1e-3)
    np.testing.assert_allclose(report["channel_std"], pixels.std(0), atol=1e-3)


def healthy(raw: Path, classes=("a", "b"), per_class=3) -> Path:
    return make_raw(raw, [(f"{c}/{i}.png", c, noise(100 * k + i)) for k, c in enumerate(classes) for i in range(per_class)])


def test_check_usable(tmp_path, messy):
    _, ok = run(healthy(tmp_path / "ok"))
    check_usable(ok, min_images=6, drop_unreadable=False)  # does not raise
    with pytest.raises(DataError, match="fewer than"):
        check_usable(ok, min_images=7, drop_unreadable=False)

    _, one = run(healthy(tmp_path / "one", classes=("a",), per_class=5))
    with pytest.raises(DataError, match="at least 2"):
        check_usable(one, min_images=1, drop_unreadable=True)

    _, broken = run(messy)
    with pytest.raises(DataError, match="unreadable"):
        check_usable(broken, min_images=1, drop_unreadable=False)
    check_usable(broken, min_images=11, drop_unreadable=True)


def test_parallel_inspection_gives_the_same_manifest(tmp_path):
    entries = [(f"{c}/{i:02d}.png", c, noise(1000 * k + i)) for k, c in enumerate("ab") for i in range(34)]
    entries += [("a/00_copy.png", "a", noise(0)), ("b/bright.png", "b", noise(1000) + 3),
                ("a/zero.png", "a", b""), ("b/text.png", "b", b"hello\n" * 10)]
    raw = make_raw(tmp_path / "raw", entries)
    assert len(entries) >= 70
    m1, r1 = run(raw, workers=1)
    m2, r2 = run(raw, workers=2)
    pd.testing.assert_frame_equal(m1, m2)
    assert r1 == r2
    assert r1["issues"] == {"exact_duplicate": 1, "near_duplicate": 2, "not_image": 1, "zero_byte": 1}


# --- near-duplicate search ------------------------------------------------------------------

def brute_force_pairs(hashes: np.ndarray, radius: int) -> set[tuple[int, int]]:
    d = hamming(hashes[:, None], hashes[None, :])
    i, j = np.nonzero(np.triu(d <= radius, k=1))
    return set(zip(i.tolist(), j.tolist()))


def with_planted_copies(rng, hashes: np.ndarray, radius: int, copies: int = 50):
    """Append ``copies`` hashes, each a random existing one with 1..radius bits flipped."""
    src = rng.choice(len(hashes), copies, replace=False)
    planted = []
    for s in src:
        flip = rng.choice(64, rng.integers(1, radius + 1) if radius else 0, replace=False)
        mask = np.uint64(sum(1 << int(b) for b in flip))
        planted.append(hashes[s] ^ mask)
    out = np.concatenate([hashes, np.array(planted, np.uint64)])
    return out, {(int(s), len(hashes) + k) for k, s in enumerate(src)}


@pytest.mark.parametrize("radius", [0, 2, 4, 6, 8])
def test_near_pairs_matches_brute_force(radius):
    rng = np.random.default_rng(radius)
    base = rng.integers(0, np.iinfo(np.uint64).max, 2950, dtype=np.uint64, endpoint=True)
    hashes, planted = with_planted_copies(rng, base, radius)
    found = near_pairs(hashes, radius)
    assert found.shape[1] == 2 and (found[:, 0] < found[:, 1]).all()
    got = set(map(tuple, found.tolist()))
    assert len(got) == len(found)  # no pair twice
    assert got == brute_force_pairs(hashes, radius)
    assert planted <= got


@pytest.mark.parametrize("radius", [2, 8])
def test_near_pairs_with_crowded_buckets(radius):
    """Hashes that share most bits put many items in one bucket; the answer must stay exact."""
    rng = np.random.default_rng(7)
    low = rng.integers(0, 1 << 14, 500, dtype=np.uint64)
    hashes = np.uint64(0xABCD_EF01_2345_0000) ^ low
    hashes[:100] ^= np.uint64(1 << 63)  # a second crowd
    got = set(map(tuple, near_pairs(hashes, radius).tolist()))
    expected = brute_force_pairs(hashes, radius)
    assert len(expected) > 500 and got == expected


def test_near_pairs_in_small_blocks_gives_the_same_answer(monkeypatch):
    """Candidates are processed in blocks to bound memory; block edges must lose nothing."""
    import recipe.data.neardup as neardup

    rng = np.random.default_rng(3)
    hashes = np.uint64(0x1234_5678_0000_0000) ^ rng.integers(0, 1 << 12, 400, dtype=np.uint64)
    monkeypatch.setattr(neardup, "BLOCK", 97)
    stats: dict = {}
    got = set(map(tuple, near_pairs(hashes, 6, stats).tolist()))
    assert stats["compared"] > 97 * 10  # many blocks were used
    assert got == brute_force_pairs(hashes, 6)


def test_group_ids_are_connected_components():
    pairs = np.array([[0, 1], [1, 2], [4, 5], [7, 9], [8, 9]])
    g = group_ids(10, pairs)
    groups = {}
    for item, gid in enumerate(g.tolist()):
        groups.setdefault(gid, set()).add(item)
    assert sorted(map(sorted, groups.values())) == [[0, 1, 2], [3], [4, 5], [6], [7, 8, 9]]
    assert len(set(group_ids(4, np.empty((0, 2), np.int64)).tolist())) == 4
    assert len(group_ids(0, np.empty((0, 2), np.int64))) == 0
