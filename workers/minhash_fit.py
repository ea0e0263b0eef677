"""The corpus-wide step of ``minhash_dedup_v1``, out of core with DuckDB.

Band keys, signatures and n-gram sets stay in the stage's score files (``docs`` is a
view over them: nothing is copied); DuckDB groups band keys into buckets and expands
buckets into candidate pairs, spilling to disk when they do not fit in memory. Python only ever holds the verified
edges and the members of non-trivial clusters, never a per-document dict of the
corpus.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import defaultdict
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from filters.base import ID, ORDER_SHARD_SHIFT
from filters.minhash import MinHashDedupV1, jaccard
from workers.layout import JobLayout
from workers.shards import Shard


def _connect(scratch: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"SET temp_directory = '{scratch}'")
    con.execute("SET memory_limit = '2GB'")
    con.execute("SET preserve_insertion_order = false")
    return con


def _sql_list(paths: list[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def _load_docs(con, layout: JobLayout, shards: list[Shard], index: int, stage: str) -> None:
    paths = [str(layout.scores(index, stage, s.key)) for s in shards]
    con.register("shard_files", pa.table({"filename": paths, "shard": pa.array([s.index for s in shards], pa.int64())}))
    con.execute(f"""
        CREATE TEMP VIEW docs AS
        SELECT (f.shard << {ORDER_SHARD_SHIFT}) + s.row AS ord,
               s.id, s.chars, s.n_shingles, s.shingles, s.signature, s.band_keys
        FROM read_parquet({_sql_list(paths)}, filename = true) s
        JOIN shard_files f USING (filename)
        WHERE NOT s.too_short_to_compare
    """)


def _candidate_pairs(con) -> None:
    con.execute("""
        CREATE TEMP TABLE buckets AS
        SELECT list(ord ORDER BY ord) AS m FROM (
            SELECT ord, unnest(band_keys) AS key, generate_subscripts(band_keys, 1) AS band FROM docs
        ) GROUP BY band, key HAVING count(*) > 1
    """)
    con.execute("""
        CREATE TEMP TABLE pairs AS
        SELECT DISTINCT a, unnest(list_filter(m, lambda y: y > a)) AS b
        FROM (SELECT unnest(m) AS a, m FROM buckets)
    """)


class _Endpoints:
    """Signatures and n-gram sets of the documents in at least one candidate pair: the
    only per-document data that comes into memory (duplicates, not the corpus)."""

    def __init__(self, con, k: int) -> None:
        t = con.sql("""
            SELECT ord, shingles, signature FROM docs
            WHERE ord IN (SELECT a FROM pairs UNION SELECT b FROM pairs) ORDER BY ord
        """).to_arrow_table()
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


def _verified_edges(con, ends: _Endpoints, threshold: float, k: int, verify: str):
    """Candidate pairs at or above the threshold, with their similarity.

    The signature estimate of J has standard deviation sqrt(J(1 − J)/k) (0.037 at
    J = 0.8, k = 120): pairs estimated more than 5 of those below the threshold are
    rejected without the dearer exact n-gram intersection."""
    pairs = con.execute("SELECT a, b FROM pairs").fetchnumpy()
    a, b = pairs["a"], pairs["b"]
    est = ends.estimate(a, b)
    floor = threshold - 5 * (threshold * (1 - threshold) / k) ** 0.5 if verify == "exact" else threshold
    a, b, est = a[est >= floor], b[est >= floor], est[est >= floor]
    sim = est if verify == "signature" else ends.exact(a, b)
    ok = sim >= threshold
    return a[ok], b[ok], sim[ok]


def _find(parent: dict[int, int], x: int) -> int:
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:
        parent[x], x = root, parent[x]
    return root


def _components(a: np.ndarray, b: np.ndarray) -> list[list[int]]:
    parent: dict[int, int] = {}
    for u, v in zip(a.tolist(), b.tolist(), strict=True):
        parent.setdefault(u, u)
        parent.setdefault(v, v)
        ru, rv = _find(parent, u), _find(parent, v)
        if ru != rv:
            parent[max(ru, rv)] = min(ru, rv)
    groups: dict[int, list[int]] = defaultdict(list)
    for x in parent:
        groups[_find(parent, x)].append(x)
    return list(groups.values())


def _survivor_order(con, layout: JobLayout, rule: str, stage_names: list[str], members: list[int]) -> dict:
    """Sort key per member ord: smallest key survives."""
    con.register("members", pa.table({"ord": pa.array(members, pa.int64())}))
    if rule == "min_id":
        rows = con.execute("SELECT d.ord, d.id FROM docs d JOIN members USING (ord)").fetchall()
        return {o: (i,) for o, i in rows}
    if rule == "longest":
        rows = con.execute("SELECT d.ord, d.chars, d.id FROM docs d JOIN members USING (ord)").fetchall()
        return {o: (-c, i) for o, c, i in rows}
    stage, column = re.fullmatch(r"best_score:(\w+)\.(\w+)", rule).groups()
    if stage not in stage_names:
        raise ValueError(f"survivor {rule!r}: stage {stage!r} is not in this job")
    index = stage_names.index(stage)
    pattern = str(layout.stage_dir(index, stage) / "scores" / "*.parquet")
    rows = con.execute(f"""
        SELECT d.ord, s."{column}", d.id FROM docs d JOIN members USING (ord)
        LEFT JOIN read_parquet('{pattern}') s ON s.id = d.id
    """).fetchall()
    return {o: (-(v if v is not None else float("-inf")), i) for o, v, i in rows}


def fit_minhash(layout: JobLayout, shards: list[Shard], index: int, stage: MinHashDedupV1,
                stage_names: list[str]) -> pa.Table:
    p = stage.params
    k = p.bands * p.rows
    with tempfile.TemporaryDirectory(dir=layout.stage_dir(index, stage.name)) as scratch:
        con = _connect(Path(scratch))
        _load_docs(con, layout, shards, index, stage.name)
        _candidate_pairs(con)
        ends = _Endpoints(con, k)
        a, b, j = _verified_edges(con, ends, p.threshold, k, p.verify)
        best: dict[int, float] = defaultdict(float)
        for u, v, s in zip(a.tolist(), b.tolist(), j.tolist(), strict=True):
            best[u] = max(best[u], s)
            best[v] = max(best[v], s)
        groups = _components(a, b)
        order = _survivor_order(con, layout, p.survivor, stage_names, [m for g in groups for m in g])
        assigned = _assign(ends, groups, order, p.min_survivor_jaccard, p.verify)
        ids = dict(con.execute("SELECT ord, id FROM docs WHERE ord IN (SELECT ord FROM members)").fetchall())
        con.close()
    sizes: dict[int, int] = defaultdict(int)
    for survivor, _ in assigned.values():
        sizes[survivor] += 1
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


def cluster_members(output: str | Path, cluster_id: str) -> dict:
    """A cluster's members (survivor first) and the exact Jaccard of every pair of them
    (for the dashboard and the REST API)."""
    layout = JobLayout(output)
    job = json.loads(layout.job_file.read_text())
    index = job["stages"].index(MinHashDedupV1.name)
    fit = pq.read_table(layout.fit(index, MinHashDedupV1.name))
    members = fit.filter(pc.equal(fit["cluster_id"], cluster_id))
    if members.num_rows == 0:
        raise KeyError(f"no cluster {cluster_id!r} in {output}")
    ids = members[ID].to_pylist()
    pattern = str(layout.stage_dir(index, MinHashDedupV1.name) / "scores" / "*.parquet")
    con = duckdb.connect()
    rows = con.execute(f"SELECT id, shingles FROM read_parquet('{pattern}') WHERE list_contains($ids, id)",
                       {"ids": ids}).fetchall()
    con.close()
    sets = {i: np.array(s, dtype=np.uint64) for i, s in rows}
    order = sorted(ids, key=lambda i: (i != cluster_id, i))
    pairs = [{"a": a, "b": b, "jaccard": jaccard(sets[a], sets[b])}
             for n, a in enumerate(order) for b in order[n + 1:]]
    return {"cluster_id": cluster_id, "survivor_id": cluster_id, "members": order, "pairs": pairs}
