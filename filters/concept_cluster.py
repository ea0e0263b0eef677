"""Spherical k-means and SemDeDup for ``concept_prune_v1`` (methods.md §4), in pieces no
larger than a training sample, a unit or one cluster: k-means trains on a seeded sample,
each unit's rows are assigned to their nearest centroid, and SemDeDup reads one cluster's
rows at a time (blockwise inside it).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from filters.concept_method import semdedup_max_cosine


def default_k(n: int) -> int:
    """About √n (methods.md: k ≈ √n for a few thousand documents), at least 2, at most n."""
    return int(max(1, min(n, max(2, round(np.sqrt(n))), 50_000)))


def sample_rows(n: int, max_train_points: int, seed: int) -> np.ndarray:
    """The rows (of n, in input order) k-means trains on: all, or a seeded sample."""
    if n <= max_train_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_train_points, replace=False))


def matrix(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A column of non-null, equal-length float vectors (fixed-size or plain lists, as
    Arrow or DuckDB gives them) as a float32 (n, dim) array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(len(column), -1) if len(column) else np.zeros((0, 0), np.float32)


def train_centroids(sample: np.ndarray, k: int, niter: int, seed: int, threads: int) -> np.ndarray:
    """faiss spherical k-means (``faiss.Kmeans(d, k, niter, seed, spherical=True)`` as in
    SemDeDup's clustering) on the training sample (``sample_rows``)."""
    import faiss

    faiss.omp_set_num_threads(threads)
    dim = sample.shape[1]
    sample = np.ascontiguousarray(sample)
    # faiss would subsample again above 256 points per centroid; the sample is ours.
    km = faiss.Kmeans(dim, k, niter=niter, seed=seed, spherical=True, verbose=False,
                      max_points_per_centroid=max(256, len(sample) // k + 1), min_points_per_centroid=1)
    km.train(sample)
    centroids = np.asarray(km.centroids, dtype=np.float32)
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    return centroids / np.where(norms > 0, norms, 1.0)


def assign(emb: np.ndarray, centroids: np.ndarray, batch: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """(cluster, cosine distance 1 − ⟨x, μ⟩) of every row, a batch at a time."""
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    n = len(emb)
    labels = np.empty(n, np.int64)
    dist = np.empty(n, np.float64)
    for start in range(0, n, batch):
        sims, idx = index.search(np.ascontiguousarray(emb[start:start + batch]), 1)
        labels[start:start + batch] = idx[:, 0]
        dist[start:start + batch] = 1.0 - sims[:, 0].astype(np.float64)
    return labels, dist


def hard_first(labels: np.ndarray, dist: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Row indices sorted by cluster, then farthest from the centroid first (SemDeDup's
    ``keep_hard`` order), then input order: a fixed order whatever the workers. Distances
    within 1e-5 are ties (batch padding moves a transformer embedding by ~1e-7, so two
    copies of a text must not be ordered by that noise)."""
    return np.lexsort((order, -tie_key(dist), labels))


def tie_key(dist: np.ndarray) -> np.ndarray:
    return np.round(np.nan_to_num(dist, nan=0.0), 5)


def semdedup(emb: np.ndarray, labels: np.ndarray, ranked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the largest cosine to an earlier row of its cluster in ``ranked`` order and
    that row's index (-inf / -1 for the first of a cluster)."""
    best = np.full(len(labels), -np.inf)
    nearest = np.full(len(labels), -1, np.int64)
    cuts = np.flatnonzero(np.diff(labels[ranked])) + 1
    for members in np.split(ranked, cuts):
        if len(members) < 2:
            continue
        m, arg = semdedup_max_cosine(np.asarray(emb[members]))  # one copy of the cluster, ranked
        best[members] = m
        nearest[members] = np.where(arg >= 0, members[np.maximum(arg, 0)], -1)
    return best, nearest
