"""Opening images safely, and decoding them into the canonical form the pipeline uses.

Contract:
- :func:`inspect_image` reads one file and returns what the audit records (format, mode, size,
  EXIF orientation, hashes, channel sums) or the issue that makes it unusable. It refuses a
  decompression bomb from the header alone, before any pixel is decoded.
- :func:`load_image` decodes a valid file into 8-bit ``L`` or ``RGB``, whatever it was: EXIF
  rotation applied, CMYK and palette converted, alpha composited on white, 16-bit scaled.
- Every file or byte string of image data is opened through :func:`open_checked`, and so only by
  the decoders in :data:`FORMATS`: a file named ``x.png`` that holds EPS (which Pillow hands to
  Ghostscript), PDF, a font or any of Pillow's rarer formats is ``not_image`` before any other
  decoder sees a byte of it.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

EXIF_ORIENTATION = 0x0112
# The formats of photographs and scans that people label (camera JPEGs with several pictures open
# as MPO through the JPEG entry). Pillow's other decoders (EPS through Ghostscript, PSD, the
# bitmap fonts, ...) are more attack surface than use for a dataset someone else made.
FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP", "GIF")
_HIGH_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


class ImageRefused(Exception):
    """The file is not a usable image; ``issue`` names why (a manifest issue name)."""

    def __init__(self, issue: str, detail: str = ""):
        super().__init__(f"{issue}: {detail}" if detail else issue)
        self.issue = issue


@dataclass
class ImageInfo:
    bytes: int
    sha256: str
    format: str = ""
    mode: str = ""
    width: int = 0
    height: int = 0
    exif_orientation: int = 0
    phash: str = ""  # 16 hex digits: the 64-bit DCT hash of the canonical image
    issue: str = ""  # empty when usable
    detail: str = ""
    # channel sums over pixels scaled to [0, 1], on the canonical RGB image reduced for speed
    pixels: int = 0
    channel_sum: tuple[float, float, float] = (0.0, 0.0, 0.0)
    channel_sumsq: tuple[float, float, float] = (0.0, 0.0, 0.0)


def open_checked(path: Path | BinaryIO, max_pixels: int) -> Image.Image:
    """Open lazily, with the :data:`FORMATS` decoders only, and check the header; raise
    :class:`ImageRefused` on any problem."""
    pillow_limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check below decides, also above twice Pillow's limit (where
            # Pillow would raise): lift Pillow's limit while opening when max_pixels is larger.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if pillow_limit is not None and max_pixels > pillow_limit:
                Image.MAX_IMAGE_PIXELS = max_pixels
            im = Image.open(path, formats=FORMATS)
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        if isinstance(exc, UnidentifiedImageError):
            raise ImageRefused("not_image", f"not one of {', '.join(FORMATS)}") from None
        raise ImageRefused("decompression_bomb", str(exc)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRefused("not_image", str(exc)) from None
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise ImageRefused("decompression_bomb", f"{w}x{h} = {w * h} pixels > max_pixels {max_pixels}")
    if w == 0 or h == 0:
        im.close()
        raise ImageRefused("not_image", f"empty size {w}x{h}")
    return im


def to_canonical(im: Image.Image) -> Image.Image:
    """8-bit L or RGB, upright. Decodes the pixels (``im`` must have passed :func:`open_checked`)."""
    im = ImageOps.exif_transpose(im)
    if im.mode in _HIGH_BIT_MODES:
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if im.mode == "F":
            top = max(float(arr.max()), 1.0)
        return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode in ("1", "L"):
        return im.convert("L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")  # RGB, CMYK, YCbCr, LAB, HSV


def load_image(path: Path, max_pixels: int = Image.MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode a file into the canonical 8-bit L or RGB image."""
    with open_checked(Path(path), max_pixels) as im:
        return to_canonical(im)


def fit_square(im: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (antialiased), then the centre ``size x size`` crop."""
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=None)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def inspect_image(path: Path, *, max_pixels: int, stats_max_side: int) -> ImageInfo:
    import imagehash

    data = Path(path).read_bytes()
    info = ImageInfo(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    if not data:
        info.issue = "zero_byte"
        return info
    try:
        im = open_checked(Path(path), max_pixels)
    except ImageRefused as exc:
        info.issue, info.detail = exc.issue, str(exc)
        return info
    with im:
        info.format, info.mode = im.format or "", im.mode
        info.width, info.height = im.size
        try:
            info.exif_orientation = int(im.getexif().get(EXIF_ORIENTATION, 0) or 0)
        except Exception:  # a broken EXIF block is not a broken image
            info.exif_orientation = 0
        try:
            im.load()  # full decode: truncated or corrupt data fails here
            canon = to_canonical(im)
        except Exception as exc:
            info.issue, info.detail = "truncated_or_corrupt", f"{type(exc).__name__}: {exc}"
            return info
    info.phash = str(imagehash.phash(canon))
    small = canon.convert("RGB")
    small.thumbnail((stats_max_side, stats_max_side))
    arr = np.asarray(small, dtype=np.float64).reshape(-1, 3) / 255.0
    info.pixels = arr.shape[0]
    info.channel_sum = tuple(arr.sum(axis=0).tolist())
    info.channel_sumsq = tuple((arr**2).sum(axis=0).tolist())
    return info
