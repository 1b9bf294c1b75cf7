"""Near-duplicate search on 64-bit perceptual hashes without comparing all pairs.

Multi-index hashing (Norouzi, Punjani & Fleet, "Fast Search in Hamming Space with Multi-Index
Hashing", CVPR 2012), exact form. Split the 64 bits into ``m`` chunks; two hashes within Hamming
distance ``r`` must be within ``r // m`` bits of each other on at least one chunk (pigeonhole).
So for each chunk, each hash probes the sorted chunk keys for every key within ``r // m`` bits
of its own, and only the pairs found that way are compared on all 64 bits.

``m`` is chosen per call to minimise the expected work on uniformly spread hashes: probes
(``n * m * C(w, <= r//m)`` lookups) plus candidates (``m * n² / 2 * C(w, <= r//m) / 2**w``).
With 100,000 uniform hashes that is 3.7 million candidates at the default radius 4 (1/1,400 of
the 5 billion pairs) and 50 million at radius 8 (``bench/neardup_scaling.py`` measures it).
Hashes that agree on many bits (a dataset of near-identical pictures) make crowded buckets and
more candidates; the answer stays exact, and candidates are processed in blocks so memory
stays bounded.
"""
from __future__ import annotations

from itertools import combinations
from math import comb

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

BITS = 64
BLOCK = 1 << 22  # candidate pairs held in memory at once (~100 MB of int64 working arrays)


def hex_to_uint64(hexes) -> np.ndarray:
    return np.array([int(h, 16) for h in hexes], dtype=np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


def plan(n: int, radius: int) -> tuple[int, int]:
    """``(chunks, sub_radius)`` with the least expected probes + candidates for ``n`` hashes."""
    best = None
    for m in range(1, min(radius + 1, BITS) + 1):
        w, sub = BITS // m, radius // m
        probes = sum(comb(w, k) for k in range(sub + 1))
        cost = n * m * probes * 4 + m * (n * n / 2) * probes / 2.0**w  # a lookup ~ 4 comparisons
        if probes <= 1 << 16 and (best is None or cost < best[0]):
            best = (cost, m, sub)
    return best[1], best[2]


def near_pairs(hashes: np.ndarray, radius: int, stats: dict | None = None) -> np.ndarray:
    """All index pairs ``(i, j)``, ``i < j``, with ``hamming(h[i], h[j]) <= radius``; shape (k, 2).

    ``stats``, when given, receives ``chunks``, ``sub_radius`` and ``compared`` (candidate pairs
    checked on all 64 bits), for benchmarks."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    if n < 2:
        return np.empty((0, 2), dtype=np.int64)
    chunks, sub = plan(n, radius)
    compared = 0
    edges = np.linspace(0, BITS, chunks + 1).round().astype(int)
    found = [np.empty((0, 2), dtype=np.int64)]
    for lo, hi in zip(edges[:-1], edges[1:]):
        key = (hashes >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(key, kind="stable")
        sorted_keys = key[order]
        # Equal keys: each sorted position against the positions after it in its bucket.
        bucket_end = np.searchsorted(sorted_keys, sorted_keys, "right")
        pos = np.arange(n)
        blocks = [_expand(order, pos + 1, bucket_end - pos - 1, order)]
        # Keys ``flip`` apart: probed from the side whose key lacks the flip's top bit, so each
        # pair of keys is visited once.
        for flip in _masks(hi - lo, sub)[1:]:
            top = np.uint64(1 << (flip.bit_length() - 1))
            src = np.flatnonzero((key & top) == 0)
            probe = key[src] ^ np.uint64(flip)
            first = np.searchsorted(sorted_keys, probe, "left")
            blocks.append(_expand(src, first, np.searchsorted(sorted_keys, probe, "right") - first, order))
        for block in blocks:
            for i, j in block:
                compared += len(i)
                ok = hamming(hashes[i], hashes[j]) <= radius
                found.append(np.sort(np.stack([i[ok], j[ok]], axis=1), axis=1))
    if stats is not None:
        stats.update(chunks=chunks, sub_radius=sub, compared=compared)
    pairs = np.concatenate(found)
    return np.unique(pairs, axis=0) if len(pairs) else pairs


def _masks(width: int, sub: int) -> list[int]:
    """Every ``width``-bit mask with at most ``sub`` bits set (0 first)."""
    return [sum(1 << b for b in bits) for k in range(sub + 1) for bits in combinations(range(width), k)]


def _expand(src: np.ndarray, start: np.ndarray, count: np.ndarray, order: np.ndarray):
    """Yield ``(i, j)`` arrays: ``src[k]`` against each of ``order[start[k] : start[k] + count[k]]``,
    in blocks of at most ~BLOCK pairs (one item's matches are never split)."""
    rows = np.flatnonzero(count > 0)
    if not len(rows):
        return
    ends = np.cumsum(count[rows])
    cuts = np.searchsorted(ends, np.arange(BLOCK, ends[-1], BLOCK), "left") + 1
    for block in np.split(rows, cuts):
        c = count[block]
        offset = np.arange(c.sum()) - np.repeat(np.cumsum(c) - c, c)
        yield np.repeat(src[block], c), order[np.repeat(start[block], c) + offset]


def group_ids(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of the pair graph: one id per item, equal within a group."""
    if n == 0:
        return np.empty(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)
