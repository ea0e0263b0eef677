"""The arithmetic of SemDeDup and density-based pruning (Abbas et al. 2023/2024; methods.md
§4), apart from any engine: numpy in, numpy out, so tests can check it on hand examples.

* ``semdedup_max_cosine``: within one cluster, in hard-first order, each item's largest
  cosine to an *earlier* item (the official code's upper triangle: non-transitive, an item
  goes even when its earlier neighbour went too) and which item that is.
* ``inter_cluster_distance``: d_inter, the mean cosine distance to the ``num_nns`` nearest
  other centroids.
* ``dbp_quotas``: P = softmax(C / τ) and the keep counts of the paper's quadratic
  programme in closed form, x_j = clip(P_j·N + λ, lb_j, |C_j|) with λ by bisection,
  rounded so that the counts sum to N exactly.
"""

from __future__ import annotations

import numpy as np

BLOCK_CELLS = 32_000_000  # similarities SemDeDup computes at once (128 MB of float32)


def block_rows(n: int, budget_cells: int = BLOCK_CELLS) -> int:
    """Rows of a cluster of n that ``semdedup_max_cosine`` compares at once, each against
    every row before it, so a block holds at most ``budget_cells`` similarities."""
    return max(1, min(1024, budget_cells // max(n, 1)))


def block_cells(n: int, budget_cells: int = BLOCK_CELLS) -> int:
    """Similarities ``semdedup_max_cosine`` holds at once for a cluster of n."""
    return block_rows(n, budget_cells) * n


def semdedup_max_cosine(emb: np.ndarray, budget_cells: int = BLOCK_CELLS) -> tuple[np.ndarray, np.ndarray]:
    """For rows already in the cluster's fixed order: (max cosine to an earlier row, index
    of that row; -inf and -1 for the first). Blockwise: a block of rows against every row
    before it, the block sized so it holds at most ``budget_cells`` similarities (128 MB)."""
    n = len(emb)
    best = np.full(n, -np.inf, dtype=np.float64)
    arg = np.full(n, -1, dtype=np.int64)
    block = block_rows(n, budget_cells)
    for start in range(1, n, block):
        stop = min(n, start + block)
        sims = emb[start:stop] @ emb[:stop].T  # rows j ∈ [start, stop), columns i < stop
        # only i < j counts: in the square part (columns start..stop) blank the diagonal and above
        square = sims[:, start:stop]
        square[np.triu_indices(stop - start)] = -np.inf
        arg[start:stop] = sims.argmax(axis=1)
        best[start:stop] = sims[np.arange(stop - start), arg[start:stop]]
    return best, arg


def inter_cluster_distance(centroids: np.ndarray, num_nns: int) -> np.ndarray:
    """d_inter(j): mean of 1 − ⟨μ_j, μ_i⟩ over the ``num_nns`` most similar other centroids
    (self excluded; fewer when there are fewer other clusters)."""
    k = len(centroids)
    if k < 2:
        return np.full(k, np.nan)
    sims = centroids @ centroids.T
    np.fill_diagonal(sims, -np.inf)
    m = min(num_nns, k - 1)
    nearest = -np.sort(-sims, axis=1)[:, :m]
    return (1.0 - nearest).mean(axis=1)


def softmax(x: np.ndarray, tau: float) -> np.ndarray:
    z = x / tau
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def lower_bounds(sizes: np.ndarray, keep_n: int, cls_bal_ratio: float) -> np.ndarray:
    """lb_j = min(m, |C_j| − 1) with m = int(N / k · cls_bal_ratio), or 1 when the ratio is 0
    (the official ``prune.py``); never below 0."""
    k = len(sizes)
    m = int(keep_n / k * cls_bal_ratio) if cls_bal_ratio > 0 else 1
    return np.maximum(0, np.minimum(m, sizes - 1)).astype(np.float64)


def closed_form_counts(p: np.ndarray, sizes: np.ndarray, keep_n: int, lb: np.ndarray) -> np.ndarray:
    """The real-valued solution of min ½‖x‖² − (P·N)ᵀx s.t. Σx = N, lb ≤ x ≤ |C|: the
    additive shift λ of P·N, clipped to the bounds, found by bisection."""
    ub = sizes.astype(np.float64)
    target = p * keep_n

    def total(lam: float) -> float:
        return float(np.clip(target + lam, lb, ub).sum())

    lo, hi = float((lb - target).min()) - 1.0, float((ub - target).max()) + 1.0
    for _ in range(200):  # Σ clip(...) is monotone in λ; 200 halvings reach float precision
        mid = (lo + hi) / 2
        if total(mid) < keep_n:
            lo = mid
        else:
            hi = mid
    return np.clip(target + (lo + hi) / 2, lb, ub)


def round_to_total(x: np.ndarray, lb: np.ndarray, ub: np.ndarray, total: int) -> np.ndarray:
    """Round to integers within [ceil(lb), ub] that sum to ``total`` exactly: ``rint`` (as
    the official code), then move the difference one unit at a time to the clusters whose
    real value is nearest the next integer (``rint`` alone can miss N by up to k/2)."""
    lo, hi = np.ceil(lb - 1e-9).astype(np.int64), ub.astype(np.int64)
    n = np.clip(np.rint(x).astype(np.int64), lo, hi)
    diff = total - int(n.sum())
    if diff > 0:
        room = np.where(n < hi, x - n, -np.inf)  # most under-rounded first
        for j in np.argsort(-room, kind="stable"):
            if diff == 0:
                break
            take = min(diff, int(hi[j] - n[j]))
            n[j] += take
            diff -= take
    elif diff < 0:
        room = np.where(n > lo, n - x, -np.inf)  # most over-rounded first
        for j in np.argsort(-room, kind="stable"):
            if diff == 0:
                break
            give = min(-diff, int(n[j] - lo[j]))
            n[j] -= give
            diff += give
    return n


def dbp_quotas(complexity: np.ndarray, sizes: np.ndarray, keep_n: int, tau: float,
               cls_bal_ratio: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(P, integer keep count per cluster summing to ``keep_n``). NaN complexity (a cluster
    too small to measure) takes the mean of the others, as the official code does."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if keep_n > int(sizes.sum()):
        raise ValueError(f"cannot keep {keep_n} of {int(sizes.sum())} items")
    c = np.asarray(complexity, dtype=np.float64).copy()
    if np.isnan(c).all():
        c[:] = 0.0
    c[np.isnan(c)] = np.nanmean(c)
    p = softmax(c, tau)
    lb = lower_bounds(sizes, keep_n, cls_bal_ratio)
    if lb.sum() > keep_n:  # more clusters than N (m = 1): the floor shrinks to what N affords
        lb = np.maximum(0, np.minimum(keep_n // len(sizes), sizes - 1)).astype(np.float64)
    x = closed_form_counts(p, sizes, keep_n, lb)
    return p, round_to_total(x, lb, sizes.astype(np.float64), keep_n)
