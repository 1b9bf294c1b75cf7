"""Images: inspect_image names each kind of broken file, and load_image makes every odd but
valid one an upright 8-bit L or RGB picture."""
from __future__ import annotations

import hashlib
import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recipe.data.images import EXIF_ORIENTATION, ImageRefused, inspect_image, load_image, open_checked

MAX_PIXELS = 89478485


def inspect(path: Path, max_pixels: int = MAX_PIXELS):
    return inspect_image(path, max_pixels=max_pixels, stats_max_side=256)


def picture(size=(64, 64), seed=0) -> np.ndarray:
    """A smooth RGB picture with some structure (gradients plus a few blocks)."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    rng = np.random.default_rng(seed)
    arr = np.stack([255 * x / w, 255 * y / h, 128 + 100 * np.sin(x / 7 + y / 11)], axis=-1)
    for _ in range(4):
        x0, y0 = rng.integers(0, w - 16), rng.integers(0, h - 16)
        arr[y0 : y0 + 16, x0 : x0 + 16] = rng.integers(0, 256, 3)
    return arr.clip(0, 255).astype(np.uint8)


def inspect_image_of(path: Path, arr: np.ndarray):
    Image.fromarray(np.ascontiguousarray(arr)).save(path)
    return inspect(path)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def header_only_png(path: Path, side: int) -> Path:
    """A valid PNG header declaring side x side 8-bit grey pixels, with a tiny pixel stream."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))
    return path


# --- broken files ---------------------------------------------------------------------------

def test_zero_byte(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    info = inspect(p)
    assert info.issue == "zero_byte" and info.bytes == 0
    assert info.sha256 == hashlib.sha256(b"").hexdigest()


def test_truncated_png(tmp_path):
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise, "RGB").save(buf, "PNG")
    data = buf.getvalue()
    p = tmp_path / "cut.png"
    p.write_bytes(data[: len(data) * 2 // 3])
    info = inspect(p)
    assert info.issue == "truncated_or_corrupt", info
    assert info.format == "PNG" and (info.width, info.height) == (64, 64)  # the header was fine
    assert info.phash == ""


def test_text_file_named_jpg(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_text("this is not a JPEG, just some text\n" * 10)
    info = inspect(p)
    assert info.issue == "not_image"
    with pytest.raises(ImageRefused) as exc:
        load_image(p)
    assert exc.value.issue == "not_image"


@pytest.mark.parametrize("side", [100_000, 10_000])  # past Pillow's own hard limit, and past only ours
def test_decompression_bomb_refused_from_header(tmp_path, side):
    p = header_only_png(tmp_path / "bomb.png", side)
    assert p.stat().st_size < 200
    start = time.perf_counter()
    info = inspect(p)
    assert time.perf_counter() - start < 2.0
    assert info.issue == "decompression_bomb", info
    assert info.phash == "" and info.pixels == 0
    with pytest.raises(ImageRefused) as exc:
        load_image(p, max_pixels=MAX_PIXELS)
    assert exc.value.issue == "decompression_bomb"


def test_max_pixels_above_pillows_own_limit_is_honoured(tmp_path):
    p = header_only_png(tmp_path / "huge.png", 15_000)  # 225 M pixels: over twice Pillow's default
    limit = Image.MAX_IMAGE_PIXELS
    with open_checked(p, max_pixels=10**9) as im:  # opened lazily, nothing decoded
        assert im.size == (15_000, 15_000)
    assert Image.MAX_IMAGE_PIXELS == limit  # Pillow's global limit is left as it was
    with pytest.raises(ImageRefused, match="decompression_bomb"):
        open_checked(p, max_pixels=15_000 * 15_000 - 1)


def test_small_max_pixels_refuses_normal_image(tmp_path):
    p = tmp_path / "ok.png"
    Image.fromarray(picture()).save(p)
    assert inspect(p, max_pixels=64 * 64).issue == ""
    assert inspect(p, max_pixels=64 * 64 - 1).issue == "decompression_bomb"
    with pytest.raises(ImageRefused):
        open_checked(p, max_pixels=1000)


# --- odd but valid files --------------------------------------------------------------------

def test_png_and_jpeg_fields(tmp_path):
    arr = picture((48, 32))
    png, jpg = tmp_path / "a.png", tmp_path / "a.jpg"
    Image.fromarray(arr).save(png)
    Image.fromarray(arr).save(jpg, quality=95)
    for path, fmt in ((png, "PNG"), (jpg, "JPEG")):
        info = inspect(path)
        assert info.issue == ""
        assert (info.format, info.mode, info.width, info.height) == (fmt, "RGB", 48, 32)
        assert info.bytes == path.stat().st_size
        assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert len(info.phash) == 16 and int(info.phash, 16) >= 0
        assert info.exif_orientation == 0
        assert info.pixels == 48 * 32
    grey = tmp_path / "g.png"
    Image.fromarray(arr[..., 0], "L").save(grey)
    assert inspect(grey).mode == "L" and load_image(grey).mode == "L"


def test_phash_survives_reencoding(tmp_path):
    arr = picture((96, 96), seed=3)
    png, jpg = tmp_path / "p.png", tmp_path / "p.jpg"
    Image.fromarray(arr).save(png)
    Image.fromarray(arr).save(jpg, quality=95)
    a, b = inspect(png), inspect(jpg)
    assert a.sha256 != b.sha256
    assert bin(int(a.phash, 16) ^ int(b.phash, 16)).count("1") <= 4
    other = inspect_image_of(tmp_path / "o.png", picture((96, 96), seed=4)[:, ::-1])
    assert bin(int(a.phash, 16) ^ int(other.phash, 16)).count("1") > 4


@pytest.mark.parametrize("suffix", [".tif", ".jpg"])
def test_cmyk(tmp_path, suffix):
    arr = np.zeros((16, 32, 4), np.uint8)  # left half white (no ink)
    arr[:, 16:] = (0, 255, 255, 0)  # magenta + yellow = red
    p = tmp_path / f"cmyk{suffix}"
    Image.fromarray(arr, "CMYK").save(p, **({"quality": 95} if suffix == ".jpg" else {}))
    info = inspect(p)
    assert info.issue == "" and info.mode == "CMYK"
    out = load_image(p)
    assert out.mode == "RGB" and out.size == (32, 16)
    px = np.asarray(out).astype(int)
    tol = 0 if suffix == ".tif" else 12
    assert np.abs(px[8, 4] - (255, 255, 255)).max() <= tol
    assert np.abs(px[8, 28] - (255, 0, 0)).max() <= tol


def test_rgba_composited_on_white(tmp_path):
    arr = np.zeros((8, 12, 4), np.uint8)
    arr[:, :4] = (255, 0, 0, 0)  # fully transparent red: must become white
    arr[:, 4:8] = (0, 0, 255, 255)  # opaque blue
    arr[:, 8:] = (0, 0, 0, 128)  # half-transparent black: mid grey
    p = tmp_path / "rgba.png"
    Image.fromarray(arr, "RGBA").save(p)
    info = inspect(p)
    assert info.issue == "" and info.mode == "RGBA"
    out = load_image(p)
    assert out.mode == "RGB" and out.size == (12, 8)
    px = np.asarray(out).astype(int)
    assert (px[:, :4] == 255).all()
    assert (px[:, 4:8] == (0, 0, 255)).all()
    assert np.abs(px[:, 8:] - 127).max() <= 1


def test_palette_png(tmp_path):
    im = Image.new("P", (10, 6))
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (768 - 9))
    im.paste(1, (0, 0, 5, 6))
    im.paste(2, (5, 0, 10, 6))
    p = tmp_path / "pal.png"
    im.save(p)
    info = inspect(p)
    assert info.issue == "" and info.mode == "P"
    out = load_image(p)
    assert out.mode == "RGB" and out.size == (10, 6)
    px = np.asarray(out)
    assert (px[:, :5] == (255, 0, 0)).all() and (px[:, 5:] == (0, 255, 0)).all()


def test_16bit_greyscale(tmp_path):
    arr = np.zeros((4, 6), np.uint16)
    arr[:, :2] = 65535
    arr[:, 2:4] = 32768
    p = tmp_path / "deep.png"
    Image.fromarray(arr).save(p)
    info = inspect(p)
    assert info.issue == "" and info.mode in ("I;16", "I")
    out = load_image(p)
    assert out.mode == "L" and out.size == (6, 4)
    px = np.asarray(out).astype(int)
    assert (px[:, :2] == 255).all()
    assert np.abs(px[:, 2:4] - 128).max() <= 1
    assert (px[:, 4:] == 0).all()


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red
    arr[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # display rotated 90 degrees clockwise
    p = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(p, exif=exif, quality=95)
    info = inspect(p)
    assert info.issue == "" and info.exif_orientation == 6
    assert (info.width, info.height) == (40, 20)  # as stored
    out = load_image(p)
    assert out.size == (20, 40) and out.mode == "RGB"
    px = np.asarray(out).astype(int)
    # Turned clockwise, the stored left edge becomes the top.
    assert px[5, 10, 0] > 200 and px[5, 10, 2] < 60
    assert px[35, 10, 2] > 200 and px[35, 10, 0] < 60


def test_non_ascii_file_name(tmp_path):
    p = tmp_path / "ünïcødé_画像.png"
    Image.fromarray(picture((30, 20))).save(p)
    info = inspect(p)
    assert info.issue == "" and (info.width, info.height) == (30, 20)
    out = load_image(p)
    assert out.size == (30, 20) and np.array_equal(np.asarray(out), picture((30, 20)))
