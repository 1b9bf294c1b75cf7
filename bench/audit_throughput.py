"""Throughput of the audit's per-file pass on the ELPV images, against a bare Pillow decode.

Claim measured: what the audit's per-file pass (``recipe.data.audit.inspect_all``: read the bytes,
sha256, Pillow header check and full decode, canonical image, 64-bit pHash, channel sums on a
reduced copy) costs per image relative to only decoding the PNG, and how much a second worker
process buys on this machine.

How it is measured:
- Files: the ELPV package's PNGs (2,624 300x300 grayscale cells), sorted by name; ``--limit N``
  keeps the first N.
- Three cases, each timed over the whole file list with ``time.perf_counter``:
  ``bare decode`` (the same-run reference: ``Image.open(p).load()`` per file, nothing else),
  ``inspect_all workers=1`` (in-process loop) and ``inspect_all workers=2`` (a
  ``ProcessPoolExecutor`` started inside the call, so pool start-up is included, as in the
  audit stage). Audit settings are the project defaults (max_pixels 89,478,485,
  stats_max_side 256).
- One untimed warm-up pass (bare decode of every file plus one inspect_image call) so the page
  cache and lazy imports are warm for every case; then ``--trials`` rounds (default 3), each
  running the cases in turn, so slow drift affects all of them alike.
- Printed: images/s as min / median / max over the trials (min/max of the per-trial rates);
  ratios use the medians: audit per-file pass vs bare decode, and 2 workers vs 1.
- Hardware (``os.cpu_count()``, ``platform``) and library versions are printed with the results.
  With 2 cores, 2 workers can at best double the rate; pool start-up and pickling the results
  back cost part of that.

Run: ``python bench/audit_throughput.py`` (about 2 minutes on 2 cores with all 2,624 files).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import imagehash
import numpy as np
import PIL
from PIL import Image

from recipe.data.audit import inspect_all
from recipe.data.images import inspect_image

MAX_PIXELS = 89_478_485  # conf/config.yaml audit.max_pixels
STATS_MAX_SIDE = 256  # conf/config.yaml audit.stats_max_side


def elpv_files() -> list[Path]:
    import elpv_dataset

    return sorted((Path(elpv_dataset.__file__).parent / "data" / "images").glob("*.png"))


def bare_decode(files: list[Path]) -> None:
    for p in files:
        with Image.open(p) as im:
            im.load()


def audit_pass(files: list[Path], workers: int) -> None:
    infos = inspect_all(files, max_pixels=MAX_PIXELS, stats_max_side=STATS_MAX_SIDE, workers=workers)
    bad = [i.issue for i in infos if i.issue]
    if len(infos) != len(files) or bad:
        raise SystemExit(f"inspect_all: {len(infos)} results for {len(files)} files, issues {sorted(set(bad))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=None, help="use only the first N files (default: all)")
    ap.add_argument("--trials", type=int, default=3)
    args = ap.parse_args()
    if args.trials < 1 or (args.limit is not None and args.limit < 1):
        ap.error("need trials >= 1 and limit >= 1")

    files = elpv_files()[: args.limit]
    n = len(files)
    print(f"audit per-file pass throughput | {n:,} ELPV files | {args.trials} trials (+1 warm-up)")
    print(f"{platform.platform()} | {platform.processor() or platform.machine()} | os.cpu_count()={os.cpu_count()}")
    print(f"python {sys.version.split()[0]} | Pillow {PIL.__version__} | imagehash {imagehash.__version__} | numpy {np.__version__}")
    if n < 64:
        print("note: fewer than 64 files, so inspect_all runs in-process even with workers=2")
    print()

    cases = {
        "bare decode (reference)": lambda: bare_decode(files),
        "inspect_all workers=1": lambda: audit_pass(files, 1),
        "inspect_all workers=2": lambda: audit_pass(files, 2),
    }
    bare_decode(files)  # warm-up: page cache
    inspect_image(files[0], max_pixels=MAX_PIXELS, stats_max_side=STATS_MAX_SIDE)  # lazy imports
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.trials):
        for name, fn in cases.items():
            t = time.perf_counter()
            fn()
            rates[name].append(n / (time.perf_counter() - t))

    med = {name: statistics.median(r) for name, r in rates.items()}
    ref = med["bare decode (reference)"]
    print(f"{'case':<26} {'min img/s':>10} {'median':>10} {'max img/s':>10} {'ms/img':>8} {'vs bare':>8}")
    for name, r in rates.items():
        print(f"{name:<26} {min(r):10.1f} {med[name]:10.1f} {max(r):10.1f} {1e3 / med[name]:8.2f} {med[name] / ref:7.3f}x")
    print()
    w1, w2 = med["inspect_all workers=1"], med["inspect_all workers=2"]
    print(f"audit pass (workers=1) vs bare decode: {w1 / ref:.3f}x the rate, i.e. {ref / w1:.1f}x the time per image")
    print(f"audit pass (workers=2) vs bare decode: {w2 / ref:.3f}x the rate, i.e. {ref / w2:.1f}x the time per image")
    print(f"workers=2 vs workers=1: {w2 / w1:.2f}x the rate (2 cores: at most 2x)")


if __name__ == "__main__":
    main()
