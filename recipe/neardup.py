"""Near-duplicate search on 64-bit perceptual hashes without comparing all pairs.

Multi-index hashing (Norouzi, Punjani & Fleet, "Fast Search in Hamming Space with Multi-Index
Hashing", CVPR 2012), in its exact pigeonhole form: split the 64 bits into ``r + 1`` chunks;
two hashes within Hamming distance ``r`` differ in at most ``r`` chunks, so they agree exactly
on at least one. Candidates are therefore the pairs that share a bucket in some chunk, and
only those are compared: about ``(r + 1) * n² / 2 / 2**(64 / (r + 1))`` pairs on uniformly
spread hashes instead of ``n² / 2``. At the default radius 4 (13-bit chunks) that is ~1/1600
of all pairs, so up to a few hundred thousand images the fixed costs dominate and the time
grows far slower than n² (``bench/neardup_scaling.py``: 10x the hashes, ~14x the time). The
saving shrinks as the radius grows (6-bit chunks at radius 9) and when hashes agree on many
bits (a dataset of near-identical pictures makes large buckets); the answer stays exact.
"""
from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

BITS = 64


def hex_to_uint64(hexes) -> np.ndarray:
    return np.array([int(h, 16) for h in hexes], dtype=np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


def near_pairs(hashes: np.ndarray, radius: int) -> np.ndarray:
    """All index pairs ``(i, j)``, ``i < j``, with ``hamming(h[i], h[j]) <= radius``; shape (k, 2)."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    if n < 2:
        return np.empty((0, 2), dtype=np.int64)
    chunks = min(radius + 1, BITS)
    edges = np.linspace(0, BITS, chunks + 1).round().astype(int)
    found = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        key = (hashes >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        i, j = _same_bucket_pairs(key)
        close = hamming(hashes[i], hashes[j]) <= radius
        found.append(np.stack([i[close], j[close]], axis=1))
    pairs = np.concatenate(found)
    pairs.sort(axis=1)
    return np.unique(pairs, axis=0) if len(pairs) else pairs


def _same_bucket_pairs(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of indices whose keys are equal, enumerated bucket size by bucket size."""
    order = np.argsort(key, kind="stable")
    sorted_keys = key[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    sizes = np.diff(np.r_[starts, len(key)])
    out_i, out_j = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for size in np.unique(sizes[sizes > 1]):
        first = starts[sizes == size]
        members = order[first[:, None] + np.arange(size)[None, :]]  # (buckets, size)
        a, b = np.triu_indices(size, k=1)
        out_i.append(members[:, a].ravel())
        out_j.append(members[:, b].ravel())
    return np.concatenate(out_i), np.concatenate(out_j)


def group_ids(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of the pair graph: one id per item, equal within a group."""
    if n == 0:
        return np.empty(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)
