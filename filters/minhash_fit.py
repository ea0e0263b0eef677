"""The corpus-wide step of ``minhash_dedup_v1``: candidate pairs, verified edges, clusters.

Band keys, signatures and n-gram sets stay in the stage's score files: the fit works on
the out-of-core ``ScoreView`` the worker layer hands it (SQL over the score files, large
intermediates spilled to disk), which groups band keys into buckets and expands buckets
into candidate pairs. Python only ever holds the verified edges and the members of
non-trivial clusters, never a per-document dict of the corpus. The containment mode
(``_contained``) works the same way: a sample-and-join in SQL gives candidate pairs, and
only their endpoints come into memory for the exact check.

A bucketed fit (``workers/bucketed_fit.py``) runs the grouping and verification as one
task per bucket of band keys (``bucket_pairs``, ``verify_bucket``); ``fit_minhash`` then
starts from their edges (``view.bucketed``) instead, and everything after is shared.
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.stats import binom

from filters.base import ID, Bucketed, ScoreView, SqlEngine, sql_list


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


# Every document's band keys as rows; a bucketed fit's task reads the same rows from the
# partition files the scoring pass wrote.
BAND_KEY_ROWS = "SELECT ord, unnest(band_keys) AS key, generate_subscripts(band_keys, 1) AS band FROM docs"


def _candidate_pairs(view: SqlEngine, keys: str = BAND_KEY_ROWS) -> None:
    view.execute(f"""
        CREATE TEMP TABLE buckets AS
        SELECT list(ord ORDER BY ord) AS m FROM ({keys}) GROUP BY band, key HAVING count(*) > 1
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

    def __init__(self, view: SqlEngine, k: int | None, pairs: str = "pairs", query: str | None = None) -> None:
        """``k`` None: n-gram sets only (for containment, which has no signature estimate).
        ``query``: another source of the rows (``ord, shingles, signature``, sorted by ord)."""
        t = view.sql(query or f"""
            SELECT ord, shingles{", signature" if k else ""} FROM docs
            WHERE ord IN (SELECT a FROM {pairs} UNION SELECT b FROM {pairs}) ORDER BY ord
        """)
        self.ords = t["ord"].to_numpy()
        sets = t["shingles"].combine_chunks()
        self.offsets = sets.offsets.to_numpy()
        self.values = sets.values.to_numpy()
        self.sig = t["signature"].combine_chunks().values.to_numpy().reshape(-1, k) if k else np.empty((0, 0))

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

    def containment(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Exact |A ∩ B| / |A| of each pair."""
        off, vals = self.offsets, self.values
        out = np.empty(len(a))
        for n, (i, j) in enumerate(zip(self._rows(a).tolist(), self._rows(b).tolist(), strict=True)):
            x = vals[off[i]:off[i + 1]]
            out[n] = len(np.intersect1d(x, vals[off[j]:off[j + 1]], assume_unique=True)) / len(x)
        return out

    def similarity(self, a: np.ndarray, b: np.ndarray, verify: str) -> np.ndarray:
        return self.estimate(a, b) if verify == "signature" else self.exact(a, b)


def _verified_edges(view: SqlEngine, ends: _Endpoints, threshold: float, k: int, verify: str,
                    pairs_table: str = "pairs"):
    """Candidate pairs at or above the threshold, with their similarity.

    The signature estimate of J has standard deviation sqrt(J(1 − J)/k) (0.037 at
    J = 0.8, k = 120): pairs estimated more than 5 of those below the threshold are
    rejected without the dearer exact n-gram intersection."""
    pairs = view.sql(f"SELECT a, b FROM {pairs_table}")
    a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    est = ends.estimate(a, b)
    floor = threshold - 5 * (threshold * (1 - threshold) / k) ** 0.5 if verify == "exact" else threshold
    a, b, est = a[est >= floor], b[est >= floor], est[est >= floor]
    sim = est if verify == "signature" else ends.exact(a, b)
    ok = sim >= threshold
    return a[ok], b[ok], sim[ok]


_BAND_MIX = np.uint64(0x9E3779B97F4A7C15)


def band_key_rows(orders: pa.Array, keys: pa.Array) -> pa.Table:
    """A unit's band keys as key rows of a bucketed fit (``Stage.bucket_keys``): ``band``
    counts from 1, as ``generate_subscripts`` does in ``BAND_KEY_ROWS``; ``hash`` mixes the
    band into the key, so one key at two band positions goes to unrelated buckets.
    Documents with a null list (too short to compare) have no rows."""
    if not pa.types.is_list(keys.type):  # no document reached the unit: an untyped empty column
        keys = pa.array([], pa.list_(pa.uint64()))
    flat = pc.list_flatten(keys).to_numpy().astype(np.uint64, copy=False)
    parent = pc.list_parent_indices(keys).to_numpy()
    lengths = pc.fill_null(pc.list_value_length(keys), 0).to_numpy()
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    band = (np.arange(len(flat)) - starts + 1).astype(np.int16)
    with np.errstate(over="ignore"):
        mixed = (flat ^ (band.astype(np.uint64) * _BAND_MIX)) * _BAND_MIX
    return pa.table({"band": band, "key": flat, "ord": orders.to_numpy()[parent].astype(np.int64), "hash": mixed})


def bucket_pairs(view: SqlEngine, keys: str) -> pa.Table:
    """Candidate pairs of one bucket of a bucketed fit: ``keys`` gives its rows (``ord``,
    ``band``, ``key``). A (band, key) lies wholly in one bucket, so the union over the
    buckets is the single-node fit's pairs; a pair two buckets both find is one edge."""
    _candidate_pairs(view, keys)
    return view.sql("SELECT a, b FROM pairs")


def verify_bucket(view: SqlEngine, pairs: str, ends: str, threshold: float, k: int, verify: str) -> pa.Table:
    """The verified edges among one bucket's candidate pairs (the table ``pairs``),
    reading their endpoints from the query ``ends`` (``ord``, ``shingles``, ``signature``)."""
    endpoints = _Endpoints(view, k, query=f"""
        SELECT ord, shingles, signature FROM ({ends})
        WHERE ord IN (SELECT a FROM {pairs} UNION SELECT b FROM {pairs}) ORDER BY ord
    """)
    a, b, sim = _verified_edges(view, endpoints, threshold, k, verify, pairs)
    return pa.table({"a": pa.array(a, pa.int64()), "b": pa.array(b, pa.int64()), "sim": pa.array(sim, pa.float64())})


class _EdgeSims:
    """The similarities ``_assign`` asks for, after a bucketed fit: a pair that is an edge
    has its verified similarity already (the value ``_Endpoints.similarity`` would compute
    again: both are symmetric), so only the documents of the other pairs are read, on
    demand. The merge then holds the edges, not the n-gram sets of every duplicate."""

    def __init__(self, view: SqlEngine, k: int, ends: list[Path], a: np.ndarray, b: np.ndarray,
                 sim: np.ndarray) -> None:
        self.view, self.k, self.ends = view, k, ends
        self.edges = pa.table({"a": a, "b": b, "sim": sim})
        self.loaded = 0  # documents whose n-gram sets were read (tests check it stays small)

    def similarity(self, x: np.ndarray, y: np.ndarray, verify: str) -> np.ndarray:
        query = pa.table({"a": np.minimum(x, y), "b": np.maximum(x, y), "i": np.arange(len(x))})
        found = query.join(self.edges, ["a", "b"], join_type="inner")
        sim = np.full(len(x), np.nan)
        sim[found["i"].to_numpy()] = found["sim"].to_numpy()
        miss = np.isnan(sim)
        if miss.any():
            need = np.unique(np.concatenate([x[miss], y[miss]]))
            self.loaded += len(need)
            self.view.register("sims_needed", pa.table({"ord": need}))
            ends = _Endpoints(self.view, self.k, query=f"""
                SELECT DISTINCT ON (ord) ord, shingles, signature FROM read_parquet({sql_list(self.ends)})
                WHERE ord IN (SELECT ord FROM sims_needed) ORDER BY ord
            """)
            sim[miss] = ends.similarity(x[miss], y[miss], verify)
        return sim


def _merged_edges(view: SqlEngine, bucketed: Bucketed, dropped: str | None):
    """The buckets' edges as one list (a pair found in two buckets once), less those
    touching a document of the table ``dropped``."""
    if not bucketed.edges:  # no bucket had a candidate pair
        return tuple(np.empty(0, t) for t in (np.int64, np.int64, np.float64))
    view.execute(f"CREATE OR REPLACE TEMP TABLE edges AS SELECT DISTINCT a, b, sim "
                 f"FROM read_parquet({sql_list(bucketed.edges)})")
    if dropped:
        view.execute(f"DELETE FROM edges WHERE a IN (SELECT ord FROM {dropped}) OR b IN (SELECT ord FROM {dropped})")
    t = view.sql("SELECT a, b, sim FROM edges")
    return t["a"].to_numpy(), t["b"].to_numpy(), t["sim"].to_numpy()


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


def _indexed_duplicates(view: ScoreView, parts: list[Path], threshold: float, k: int,
                        verify: str) -> dict[int, tuple[int, float]]:
    """New document ord → (the index document's key, the similarity) for every new document
    with a verified edge to a document of the index (``filters/minhash_index.py``): a band
    key shared at the same band position gives a candidate pair, verified exactly as the
    Jaccard pairs are. Its match is the most similar index document (ties: the earliest
    added). DuckDB reads the index's Parquet parts itself; only the candidates' endpoints
    come into memory. An index document's key is negative, ``-1 - (part << 40 | ord)``, so
    it never meets a new document's ord."""
    view.execute("CREATE OR REPLACE TEMP VIEW idx AS " + " UNION ALL ".join(
        f"SELECT -1 - ({i}::BIGINT << 40 | ord) AS xord, id, job_id, shingles, signature, band_keys "
        f"FROM read_parquet({sql_list([p])})" for i, p in enumerate(parts)))
    view.execute("""
        CREATE OR REPLACE TEMP TABLE new_keys AS
        SELECT ord, unnest(band_keys) AS key, generate_subscripts(band_keys, 1) AS band FROM docs
    """)
    view.execute("""
        CREATE OR REPLACE TEMP TABLE xpairs AS
        SELECT DISTINCT n.ord AS a, i.xord AS b FROM new_keys n JOIN (
            SELECT xord, key, band FROM (
                SELECT xord, unnest(band_keys) AS key, generate_subscripts(band_keys, 1) AS band FROM idx
            ) WHERE key IN (SELECT key FROM new_keys)
        ) i USING (band, key)
    """)
    if view.sql("SELECT count(*) AS n FROM xpairs")["n"][0].as_py() == 0:
        return {}
    ends = _Endpoints(view, k, query="""
        SELECT ord, shingles, signature FROM docs WHERE ord IN (SELECT a FROM xpairs)
        UNION ALL
        SELECT xord AS ord, shingles, signature FROM idx WHERE xord IN (SELECT b FROM xpairs)
        ORDER BY ord
    """)
    a, b, sim = _verified_edges(view, ends, threshold, k, verify, "xpairs")
    best: dict[int, tuple[int, float]] = {}
    for u, v, s in zip(a.tolist(), b.tolist(), sim.tolist(), strict=True):
        if u not in best or (s, v) > (best[u][1], best[u][0]):  # larger xord: an earlier part/row
            best[u] = (v, s)
    return dict(sorted(best.items()))  # in input order, however DuckDB returned the pairs


def fit_minhash(view: ScoreView, threshold: float, min_survivor_jaccard: float, verify: str, survivor: str,
                k: int, containment: float | None = None, containment_sample: int = 32,
                against: list[Path] | None = None) -> pa.Table:
    """Duplicate clusters: one row per member of a cluster of two or more (survivor included).
    With ``containment``, also one row per document contained in a longer one (columns
    ``contained_in`` and ``containment``; null for the other rows). With ``against`` (the
    Parquet parts of an index's live version), first one row per new document that
    duplicates an indexed one (``indexed_job`` set; ``survivor_id`` the indexed id,
    ``cluster_id`` ``<job_id>:<id>``); those leave the new documents' own clustering."""
    _load_docs(view)
    bucketed = view.bucketed
    if bucketed is None:
        _candidate_pairs(view)
    indexed = _indexed_duplicates(view, against, max(threshold, min_survivor_jaccard), k, verify) if against else {}
    if indexed:
        view.register("indexed_new", pa.table({"ord": pa.array(list(indexed), pa.int64())}))
    ends: _Endpoints | _EdgeSims
    if bucketed is not None:  # the per-bucket tasks verified the pairs (``bucket_pairs``, ``verify_bucket``)
        a, b, j = _merged_edges(view, bucketed, "indexed_new" if indexed else None)
    else:
        if indexed:
            view.execute("DELETE FROM pairs WHERE a IN (SELECT ord FROM indexed_new) "
                         "OR b IN (SELECT ord FROM indexed_new)")
        ends = _Endpoints(view, k)
        a, b, j = _verified_edges(view, ends, threshold, k, verify)
    # In (a, b) order, whichever way the edges came: the same clusters, listed the same way.
    by_pair = np.lexsort((b, a))
    a, b, j = a[by_pair], b[by_pair], j[by_pair]
    if bucketed is not None:
        ends = _EdgeSims(view, k, bucketed.ends, a, b, j)
    best: dict[int, float] = defaultdict(float)
    for u, v, s in zip(a.tolist(), b.tolist(), j.tolist(), strict=True):
        best[u] = max(best[u], s)
        best[v] = max(best[v], s)
    groups = _components(a, b)
    order = _survivor_order(view, survivor, [m for g in groups for m in g])
    assigned = _assign(ends, groups, order, min_survivor_jaccard, verify)
    sizes: dict[int, int] = defaultdict(int)
    for surv, _ in assigned.values():
        sizes[surv] += 1
    rows = {m: (s, sj) for m, (s, sj) in assigned.items() if sizes[s] > 1}
    contained = {} if containment is None else _contained(
        view, [*(m for m, (s, _) in rows.items() if s != m), *indexed], containment, containment_sample)
    rows_at = [*indexed, *rows, *(m for m in contained if m not in rows)]
    view.register("named", pa.table({"ord": pa.array(
        [*rows_at, *(s for s, _ in rows.values()), *(c for c, _ in contained.values())], pa.int64())}))
    ids = {r["ord"]: r["id"] for r in view.sql(
        "SELECT ord, id FROM docs WHERE ord IN (SELECT ord FROM named)").to_pylist()}
    jobs: dict[int, str] = {}  # index document key → the job that added it
    if indexed:
        view.register("named_idx", pa.table({"xord": pa.array([x for x, _ in indexed.values()], pa.int64())}))
        for r in view.sql("SELECT xord, id, job_id FROM idx WHERE xord IN (SELECT xord FROM named_idx)").to_pylist():
            ids[r["xord"]] = r["id"]
            jobs[r["xord"]] = r["job_id"]

    def survivor_of(m: int) -> str | None:
        return ids[indexed[m][0]] if m in indexed else ids[rows[m][0]] if m in rows else None

    cols = {
        ID: pa.array([ids[m] for m in rows_at], pa.string()),
        "cluster_id": pa.array([f"{jobs[indexed[m][0]]}:{ids[indexed[m][0]]}" if m in indexed
                                else survivor_of(m) for m in rows_at], pa.string()),
        "cluster_size": pa.array([sizes[rows[m][0]] if m in rows else None for m in rows_at], pa.int64()),
        "survivor_id": pa.array([survivor_of(m) for m in rows_at], pa.string()),
        "survivor_jaccard": pa.array([indexed[m][1] if m in indexed else rows[m][1] if m in rows else None
                                      for m in rows_at], pa.float64()),
        "max_jaccard": pa.array([indexed[m][1] if m in indexed else best.get(m, 0.0) if m in rows else None
                                 for m in rows_at], pa.float64()),
    }
    if against:
        cols["indexed_job"] = pa.array([jobs[indexed[m][0]] if m in indexed else None for m in rows_at],
                                       pa.string())
    if containment is not None:
        cols["contained_in"] = pa.array([ids[contained[m][0]] if m in contained else None for m in rows_at],
                                        pa.string())
        cols["containment"] = pa.array([contained[m][1] if m in contained else None for m in rows_at], pa.float64())
    return pa.table(cols)


# Containment candidates (see the module docstring of ``filters/minhash.py``). Each pair
# with C(A ⊆ B) ≥ t is found with probability ≥ CONTAINMENT_RECALL (per pair, before the
# common n-gram guard below).
CONTAINMENT_RECALL = 0.995
# A sampled n-gram hash found in more documents than this (boilerplate: a licence line, a
# cookie banner) is left out of the sample join: it alone would give (documents sampling
# it) × (documents holding it) rows, quadratic in its frequency. The documents sampling it
# are judged on the rest of their sample (the cut-off follows its smaller size); a
# document made only of such n-grams gets no containment candidates (it is, in practice,
# a Jaccard duplicate of its many copies). This can only lose recall, never add a removal.
COMMON_NGRAM_DOCS = 10_000


def containment_cutoffs(t: float, sample: int) -> np.ndarray:
    """``need[j]`` for a sample of j hashes: the largest m ≥ 1 with P[Binomial(j, t) ≥ m] ≥
    CONTAINMENT_RECALL. The sample is drawn without replacement, so its hit count is
    hypergeometric, which is more concentrated than the binomial: the bound is conservative.
    ``need[j]`` ≤ ⌈t·j⌉, so when the sample is all of A (|A| ≤ k) a pair at C ≥ t always
    passes. Only a sample so small that even one hit misses the recall ((1 − t)^j > 0.005:
    j < 4 at t = 0.8, j < 15 at t = 0.3) has less, when it is not a whole set: what the
    boilerplate cut left of a sample, or a ``containment_sample`` that small."""
    need = np.ones(sample + 1, np.int64)
    for j in range(1, sample + 1):
        tail = binom.sf(np.arange(j + 1) - 1, j, t)  # P[X ≥ m] for m = 0..j, decreasing in m
        need[j] = max(1, int(np.flatnonzero(tail >= CONTAINMENT_RECALL).max()))
    return need


def _contained(view: ScoreView, jaccard_removed: list[int], t: float, sample: int) -> dict[int, tuple[int, float]]:
    """Contained document ord → (its container's ord, the exact containment), over the
    documents the Jaccard step keeps. A is contained in B when B ranks above A (more
    n-grams; equal counts: the earlier input) and |A ∩ B| / |A| ≥ t."""
    view.register("jaccard_removed", pa.table({"ord": pa.array(jaccard_removed, pa.int64())}))
    view.register("cutoffs", pa.table({"k": pa.array(range(sample + 1), pa.int64()),
                                       "need": pa.array(containment_cutoffs(t, sample))}))
    view.execute("""
        CREATE OR REPLACE TEMP VIEW jkept AS
        SELECT ord, n_shingles AS n, shingles FROM docs WHERE ord NOT IN (SELECT ord FROM jaccard_removed)
    """)
    # Bottom-k sample: the stored sets are sorted, and the hashes uniformly random, so the
    # ``sample`` smallest are a uniform sample without replacement (all of a smaller set).
    view.execute(f"CREATE OR REPLACE TEMP TABLE c_sample AS "
                 f"SELECT ord AS a, n AS na, unnest(shingles[1:{sample}]) AS h FROM jkept")
    # Every kept document's n-grams that are in some sample (a semi-join: linear in the corpus).
    view.execute("""
        CREATE OR REPLACE TEMP TABLE c_post AS
        SELECT b, nb, h FROM (SELECT ord AS b, n AS nb, unnest(shingles) AS h FROM jkept)
        WHERE h IN (SELECT h FROM c_sample)
    """)
    view.execute(f"CREATE OR REPLACE TEMP TABLE c_common AS "
                 f"SELECT h FROM c_post GROUP BY h HAVING count(*) > {COMMON_NGRAM_DOCS}")
    view.execute("DELETE FROM c_sample WHERE h IN (SELECT h FROM c_common)")
    view.execute("DELETE FROM c_post WHERE h IN (SELECT h FROM c_common)")
    # Sets are unique, so count(*) per (a, b) is |sample(A) ∩ B|.
    view.execute("""
        CREATE OR REPLACE TEMP TABLE c_pairs AS
        SELECT a, b FROM (
            SELECT s.a, p.b, count(*) AS hits FROM c_sample s
            JOIN c_post p ON p.h = s.h AND (p.nb > s.na OR (p.nb = s.na AND p.b < s.a))
            GROUP BY s.a, p.b
        ) JOIN (SELECT a, count(*) AS k FROM c_sample GROUP BY a) USING (a) JOIN cutoffs USING (k)
        WHERE hits >= need
    """)
    pairs = view.sql("SELECT a, b FROM c_pairs ORDER BY a, b")
    a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    c = _Endpoints(view, None, "c_pairs").containment(a, b) if len(a) else np.empty(0)
    ok = c >= t
    found: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for u, v, x in zip(a[ok].tolist(), b[ok].tolist(), c[ok].tolist(), strict=True):
        found[u].append((v, x))
    # Every contained document goes; its container is, in order of preference, one that is
    # itself kept (not contained), the most containing, the earliest in input order.
    return {u: min(cs, key=lambda vx: (vx[0] in found, -vx[1], vx[0])) for u, cs in found.items()}


def _assign(ends: _Endpoints | _EdgeSims, groups: list[list[int]], order: dict, threshold: float, verify: str) -> dict:
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
