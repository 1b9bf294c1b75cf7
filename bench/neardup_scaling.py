"""How near-duplicate search time grows with the number of hashes (``recipe.data.neardup.near_pairs``).

Claim: on uniformly spread 64-bit hashes, multi-index hashing (MIH) finds exactly the pairs within
Hamming radius r (default 4, the audit's ``near_dup_bits``) that an all-pairs comparison finds,
and 10x more hashes costs far less than the 100x that all-pairs costs, because only hashes whose
keys are within r // m bits on one of m chunks are compared (m chosen by ``neardup.plan``). The
candidate count is still quadratic in n, only with a tiny constant; the table prints it so the
growth of the time can be read against it.

How it is measured:
- Synthetic sets of 10,000 and 100,000 hashes (``--sizes``): uniform random 64-bit values, of
  which ``--planted`` (default 300) are replaced by near-copies of other members, each at a
  Hamming distance drawn from 1..r (exactly that many distinct bits flipped). Fixed seed.
- Time of ``near_pairs(hashes, r)`` with ``time.perf_counter``, ``--trials`` runs each (default
  5) after one untimed warm-up; min / median / max are printed, ratios use the medians.
- Same-run reference: a brute-force all-pairs numpy comparison (XOR + popcount, chunked by rows
  so memory stays bounded at ``--block`` x n), on the smallest size only, with the ratio
  brute / MIH; MIH's pairs are checked against it ("exact: yes/no").
- At every size: how many planted pairs MIH found (should be all).
- Real hashes: the pHashes of the 2,624 ELPV images (computed once, as the audit does, with
  ``recipe.data.audit.inspect_all``; hashing time is not part of the figures), MIH vs brute force
  with the same exactness check. Near-identical pictures make larger buckets, so more candidates.
- Hardware (``os.cpu_count()``, ``platform``) and library versions are printed with the results.

Run: ``python bench/neardup_scaling.py`` (about 15 s on 2 cores; ``--no-elpv`` skips the
image hashing).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy

from recipe.data.neardup import BITS, hamming, hex_to_uint64, near_pairs


def synthetic(n: int, planted: int, radius: int, rng: np.random.Generator) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """n uniform 64-bit hashes; ``planted`` of them overwritten by near-copies of others."""
    hashes = rng.integers(0, 2**64, size=n, dtype=np.uint64, endpoint=False)
    idx = rng.choice(n, size=2 * planted, replace=False)
    sources, copies = idx[:planted], idx[planted:]
    truth = set()
    for s, c in zip(sources, copies):
        d = int(rng.integers(1, radius + 1))
        bits = rng.choice(BITS, size=d, replace=False)
        mask = np.uint64(0)
        for b in bits:
            mask |= np.uint64(1) << np.uint64(int(b))
        hashes[c] = hashes[s] ^ mask
        truth.add((int(min(s, c)), int(max(s, c))))
    return hashes, truth


def brute_pairs(hashes: np.ndarray, radius: int, block: int) -> np.ndarray:
    """All pairs i < j within ``radius``, comparing every pair; memory O(block * n)."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    out = [np.empty((0, 2), np.int64)]
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        d = np.bitwise_count(hashes[i0:i1, None] ^ hashes[None, i0:])  # uint8, (rows, n - i0)
        r, c = np.nonzero(d <= radius)
        c = c + i0
        r = r + i0
        upper = c > r
        out.append(np.stack([r[upper], c[upper]], axis=1).astype(np.int64))
    pairs = np.concatenate(out)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def candidates(hashes: np.ndarray, radius: int) -> int:
    """Candidate pairs near_pairs checks on all 64 bits (its own count, from an untimed call)."""
    stats: dict = {}
    near_pairs(hashes, radius, stats)
    return stats["compared"]


def timed(fn, trials: int) -> tuple[list[float], object]:
    result = fn()  # warm-up, untimed
    times = []
    for _ in range(trials):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return times, result


def spread(times: list[float]) -> str:
    ms = [t * 1e3 for t in times]
    return f"{min(ms):9.2f} {statistics.median(ms):9.2f} {max(ms):9.2f}"


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool((a == b).all())


def elpv_hashes() -> np.ndarray:
    import elpv_dataset

    from recipe.data.audit import inspect_all

    files = sorted((Path(elpv_dataset.__file__).parent / "data" / "images").glob("*.png"))
    infos = inspect_all(files, max_pixels=89_478_485, stats_max_side=256, workers=0)
    bad = [i.issue for i in infos if i.issue]
    if bad:
        raise SystemExit(f"ELPV: {len(bad)} unreadable files: {sorted(set(bad))}")
    return hex_to_uint64([i.phash for i in infos])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000],
                    help="numbers of synthetic hashes; brute force runs on the first")
    ap.add_argument("--radius", type=int, default=4, help="Hamming radius (audit.near_dup_bits)")
    ap.add_argument("--planted", type=int, default=300, help="near-copies planted in each synthetic set")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--block", type=int, default=512, help="rows per brute-force chunk (memory ~ block x n bytes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-elpv", action="store_true", help="skip the real ELPV hashes")
    args = ap.parse_args()
    if args.radius < 0 or args.trials < 1 or 2 * args.planted > min(args.sizes):
        ap.error("need radius >= 0, trials >= 1 and 2 * planted <= smallest size")

    print(f"near_pairs scaling | radius {args.radius} | {args.trials} trials (+1 warm-up) | seed {args.seed}")
    print(f"{platform.platform()} | {platform.processor() or platform.machine()} | os.cpu_count()={os.cpu_count()}")
    print(f"python {sys.version.split()[0]} | numpy {np.__version__} | scipy {scipy.__version__}")
    print()

    rng = np.random.default_rng(args.seed)
    rows, medians = [], {}
    brute_line = exact_line = None
    for k, n in enumerate(args.sizes):
        hashes, truth = synthetic(n, args.planted, args.radius, rng)
        times, pairs = timed(lambda hashes=hashes: near_pairs(hashes, args.radius), args.trials)
        medians[n] = statistics.median(times)
        found = {(int(i), int(j)) for i, j in pairs}
        rows.append((f"MIH   n={n:,}", times, len(pairs), f"{len(truth & found)}/{len(truth)}", candidates(hashes, args.radius)))
        if k == 0:
            btimes, bpairs = timed(lambda hashes=hashes: brute_pairs(hashes, args.radius, args.block), args.trials)
            found = len(truth & {(int(i), int(j)) for i, j in bpairs})
            rows.append((f"brute n={n:,}", btimes, len(bpairs), f"{found}/{len(truth)}", n * (n - 1) // 2))
            brute_line = (n, statistics.median(btimes) / medians[n])
            exact_line = same(pairs, bpairs)

    header = f"{'case':<22} {'min ms':>9} {'median':>9} {'max ms':>9} {'pairs':>8} {'planted':>9} {'compared':>14}"
    print("synthetic: uniform random hashes + planted near-copies")
    print(header)
    for name, times, npairs, planted, compared in rows:
        print(f"{name:<22} {spread(times)} {npairs:>8} {planted:>9} {compared:>14,}")
    print()
    base = args.sizes[0]
    for n in args.sizes[1:]:
        print(f"time ratio MIH n={n:,} / n={base:,}: {medians[n] / medians[base]:.1f}x"
              f"  (size ratio {n / base:g}x; linear would be {n / base:g}x, all-pairs {(n / base) ** 2:g}x)")
    n0, ratio = brute_line
    print(f"brute / MIH at n={n0:,}: {ratio:.1f}x")
    print(f"exact (MIH pairs == brute-force pairs at n={n0:,}): {'yes' if exact_line else 'no'}")

    if not args.no_elpv:
        t = time.perf_counter()
        real = elpv_hashes()
        hash_s = time.perf_counter() - t
        print()
        print(f"real: pHashes of {len(real):,} ELPV images (hashed once in {hash_s:.1f} s, not timed below);"
              f" {len(np.unique(real)):,} distinct hashes")
        mtimes, mpairs = timed(lambda: near_pairs(real, args.radius), args.trials)
        btimes, bpairs = timed(lambda: brute_pairs(real, args.radius, args.block), args.trials)
        print(header)
        print(f"{'MIH   ELPV':<22} {spread(mtimes)} {len(mpairs):>8} {'-':>9} {candidates(real, args.radius):>14,}")
        print(f"{'brute ELPV':<22} {spread(btimes)} {len(bpairs):>8} {'-':>9} {len(real) * (len(real) - 1) // 2:>14,}")
        print(f"brute / MIH on ELPV: {statistics.median(btimes) / statistics.median(mtimes):.1f}x")
        print(f"exact (MIH pairs == brute-force pairs on ELPV): {'yes' if same(mpairs, bpairs) else 'no'}")
        if len(mpairs):
            d = hamming(real[mpairs[:, 0]], real[mpairs[:, 1]])
            print("pairs by distance: " + ", ".join(f"{v}: {int((d == v).sum())}" for v in range(args.radius + 1)))


if __name__ == "__main__":
    main()
