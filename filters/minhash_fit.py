"""The corpus-wide step of ``minhash_dedup_v1``: candidate pairs, verified edges, clusters.

Band keys, signatures and n-gram sets stay in the stage's score files: the fit works on
the out-of-core ``ScoreView`` the worker layer hands it (SQL over the score files, large
intermediates spilled to disk), which groups band keys into buckets and expands buckets
into candidate pairs. Python only ever holds the verified edges and the members of
non-trivial clusters, never a per-document dict of the corpus.
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict

import numpy as np
import pyarrow as pa
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from filters.base import ID, ScoreView


def _load_docs(view: ScoreView) -> None:
    view.execute("""
        CREATE TEMP VIEW docs AS
        SELECT "order" AS ord, id, chars, n_shingles, shingles, signature, band_keys
        FROM scores WHERE NOT too_short_to_compare
    """)


# A bucket of up to this many documents gives every pair; a larger one (a boilerplate page
# crawled 10,000 times puts them all in one bucket of every band) gives a chain through its
# members plus a star to its first, which connect the same component in linear, not
# quadratic, space. Every edge is still verified, and ``_assign`` checks each member against
# the survivor, so a larger bucket removes nothing the smaller rule would keep; its members'
# ``max_jaccard`` is then the best over those edges only.
ALL_PAIRS_UP_TO = 64


def _candidate_pairs(view: ScoreView) -> None:
    view.execute("""
        CREATE TEMP TABLE buckets AS
        SELECT list(ord ORDER BY ord) AS m FROM (
            SELECT ord, unnest(band_keys) AS key, generate_subscripts(band_keys, 1) AS band FROM docs
        ) GROUP BY band, key HAVING count(*) > 1
    """)
    view.execute(f"""
        CREATE TEMP TABLE pairs AS
        SELECT DISTINCT a, b FROM (
            SELECT a, unnest(list_filter(m, lambda y: y > a)) AS b
            FROM (SELECT unnest(m) AS a, m FROM buckets WHERE len(m) <= {ALL_PAIRS_UP_TO})
            UNION ALL
            SELECT unnest(m[1:-2]) AS a, unnest(m[2:]) AS b FROM buckets WHERE len(m) > {ALL_PAIRS_UP_TO}
            UNION ALL
            SELECT m[1] AS a, unnest(m[3:]) AS b FROM buckets WHERE len(m) > {ALL_PAIRS_UP_TO}
        )
    """)


class _Endpoints:
    """Signatures and n-gram sets of the documents in at least one candidate pair: the
    only per-document data that comes into memory (duplicates, not the corpus)."""

    def __init__(self, view: ScoreView, k: int) -> None:
        t = view.sql("""
            SELECT ord, shingles, signature FROM docs
            WHERE ord IN (SELECT a FROM pairs UNION SELECT b FROM pairs) ORDER BY ord
        """)
        self.ords = t["ord"].to_numpy()
        sets = t["shingles"].combine_chunks()
        self.offsets = sets.offsets.to_numpy()
        self.values = sets.values.to_numpy()
        self.sig = t["signature"].combine_chunks().values.to_numpy().reshape(-1, k)

    def _rows(self, ords: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.ords, ords)

    def estimate(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ia, ib = self._rows(a), self._rows(b)
        out = np.empty(len(ia))
        for lo in range(0, len(ia), 1 << 16):
            out[lo:lo + (1 << 16)] = (self.sig[ia[lo:lo + (1 << 16)]] == self.sig[ib[lo:lo + (1 << 16)]]).mean(axis=1)
        return out

    def exact(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        off, vals = self.offsets, self.values
        out = np.empty(len(a))
        for n, (i, j) in enumerate(zip(self._rows(a).tolist(), self._rows(b).tolist(), strict=True)):
            x, y = vals[off[i]:off[i + 1]], vals[off[j]:off[j + 1]]
            inter = len(np.intersect1d(x, y, assume_unique=True))
            out[n] = inter / (len(x) + len(y) - inter)
        return out

    def similarity(self, a: np.ndarray, b: np.ndarray, verify: str) -> np.ndarray:
        return self.estimate(a, b) if verify == "signature" else self.exact(a, b)


def _verified_edges(view: ScoreView, ends: _Endpoints, threshold: float, k: int, verify: str):
    """Candidate pairs at or above the threshold, with their similarity.

    The signature estimate of J has standard deviation sqrt(J(1 − J)/k) (0.037 at
    J = 0.8, k = 120): pairs estimated more than 5 of those below the threshold are
    rejected without the dearer exact n-gram intersection."""
    pairs = view.sql("SELECT a, b FROM pairs")
    a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    est = ends.estimate(a, b)
    floor = threshold - 5 * (threshold * (1 - threshold) / k) ** 0.5 if verify == "exact" else threshold
    a, b, est = a[est >= floor], b[est >= floor], est[est >= floor]
    sim = est if verify == "signature" else ends.exact(a, b)
    ok = sim >= threshold
    return a[ok], b[ok], sim[ok]


def _components(a: np.ndarray, b: np.ndarray) -> list[list[int]]:
    """Connected components of the verified edges ``a[i]–b[i]`` (document ords), by
    ``scipy.sparse.csgraph.connected_components`` over ords mapped to dense indices.
    Groups come in the order their first member first appears in the edge list
    (``a[0], b[0], a[1], …``) and list their members in that order too."""
    if len(a) == 0:
        return []
    ends = np.stack([np.asarray(a, np.int64), np.asarray(b, np.int64)], axis=1).ravel()
    nodes, first, dense = np.unique(ends, return_index=True, return_inverse=True)
    n = len(nodes)
    graph = coo_matrix((np.ones(len(a)), (dense[0::2], dense[1::2])), shape=(n, n))
    count, label = connected_components(graph, directed=False)
    opens = np.full(count, len(ends), np.int64)  # where each component first appears in ``ends``
    np.minimum.at(opens, label, first)
    order = np.argsort(opens[label] * len(ends) + first)  # by component, then by first appearance
    cuts = np.flatnonzero(np.diff(opens[label[order]])) + 1
    members, bounds = nodes[order].tolist(), [0, *cuts.tolist(), n]
    return [members[lo:hi] for lo, hi in itertools.pairwise(bounds)]


def _survivor_order(view: ScoreView, rule: str, members: list[int]) -> dict:
    """Sort key per member ord: smallest key survives."""
    view.register("members", pa.table({"ord": pa.array(members, pa.int64())}))
    if rule == "min_id":
        rows = view.sql("SELECT d.ord, d.id FROM docs d JOIN members USING (ord)").to_pylist()
        return {r["ord"]: (r["id"],) for r in rows}
    if rule == "longest":
        rows = view.sql("SELECT d.ord, d.chars, d.id FROM docs d JOIN members USING (ord)").to_pylist()
        return {r["ord"]: (-r["chars"], r["id"]) for r in rows}
    match = re.fullmatch(r"best_score:(\w+)\.(\w+)", rule)
    if match is None:  # MinHashParams validates the rule; this is a stage called with unchecked params
        raise ValueError(f"survivor must be min_id, longest or best_score:<stage>.<score>, not {rule!r}")
    stage, column = match.groups()
    other = view.stage_scores(stage)
    rows = view.sql(f"""
        SELECT d.ord, s."{column}" AS v, d.id FROM docs d JOIN members USING (ord)
        LEFT JOIN {other} s ON s.id = d.id
    """).to_pylist()
    return {r["ord"]: (-(r["v"] if r["v"] is not None else float("-inf")), r["id"]) for r in rows}


def fit_minhash(view: ScoreView, threshold: float, min_survivor_jaccard: float, verify: str, survivor: str,
                k: int) -> pa.Table:
    """Duplicate clusters: one row per member of a cluster of two or more (survivor included)."""
    _load_docs(view)
    _candidate_pairs(view)
    ends = _Endpoints(view, k)
    a, b, j = _verified_edges(view, ends, threshold, k, verify)
    best: dict[int, float] = defaultdict(float)
    for u, v, s in zip(a.tolist(), b.tolist(), j.tolist(), strict=True):
        best[u] = max(best[u], s)
        best[v] = max(best[v], s)
    groups = _components(a, b)
    order = _survivor_order(view, survivor, [m for g in groups for m in g])
    assigned = _assign(ends, groups, order, min_survivor_jaccard, verify)
    ids = {r["ord"]: r["id"] for r in view.sql(
        "SELECT ord, id FROM docs WHERE ord IN (SELECT ord FROM members)").to_pylist()}
    sizes: dict[int, int] = defaultdict(int)
    for surv, _ in assigned.values():
        sizes[surv] += 1
    rows = [(m, s, sj) for m, (s, sj) in assigned.items() if sizes[s] > 1]
    return pa.table({
        ID: pa.array([ids[m] for m, _, _ in rows], pa.string()),
        "cluster_id": pa.array([ids[s] for _, s, _ in rows], pa.string()),
        "cluster_size": pa.array([sizes[s] for _, s, _ in rows], pa.int64()),
        "survivor_id": pa.array([ids[s] for _, s, _ in rows], pa.string()),
        "survivor_jaccard": pa.array([sj for _, _, sj in rows], pa.float64()),
        "max_jaccard": pa.array([best.get(m, 0.0) for m, _, _ in rows], pa.float64()),
    })


def _assign(ends: _Endpoints, groups: list[list[int]], order: dict, threshold: float, verify: str) -> dict:
    """Member → (survivor, its Jaccard to the survivor). In each component, the first
    member by survivor order survives; members at ≥ ``threshold`` (the stage's
    ``min_survivor_jaccard``) to it join it; the rest repeat the procedure among
    themselves, so a drifting chain never removes a document for a survivor it is not
    itself similar to."""
    assigned: dict[int, tuple[int, float]] = {}
    pending = [sorted(g, key=order.__getitem__) for g in groups]
    while pending:
        pairs_a, pairs_b = [], []
        for g in pending:
            assigned[g[0]] = (g[0], 1.0)
            pairs_a += [g[0]] * (len(g) - 1)
            pairs_b += g[1:]
        sims = ends.similarity(np.array(pairs_a, np.int64), np.array(pairs_b, np.int64), verify).tolist()
        sim = dict(zip(zip(pairs_a, pairs_b, strict=True), sims, strict=True))
        nxt = []
        for g in pending:
            rest = []
            for m in g[1:]:
                s = sim[(g[0], m)]
                if s >= threshold:
                    assigned[m] = (g[0], s)
                else:
                    rest.append(m)
            if len(rest) > 1:
                nxt.append(rest)
            elif rest:
                assigned[rest[0]] = (rest[0], 1.0)
        pending = nxt
    return assigned
