"""``concept_prune_v1``: SemDeDup then density-based pruning (Abbas et al. 2023, 2024;
methods.md §4). Keeps more of the complex concept clusters and less of the simple ones,
and inside a cluster drops the most prototypical documents. On the stage contract v2:

1. ``prepare`` (fit): for ``embedder: {kind: model2vec}`` without a path, distil the static
   embedder from the bundled MiniLM into the stage's artifacts (once per job); else nothing.
2. ``embed`` (per unit, on the actor pool): an L2-normalised embedding per document, kept
   in the score files (a fixed-size list: not in the lineage map).
3. ``train`` (fit): faiss spherical k-means on a seeded sample; the centroids are an artifact.
4. ``cluster`` (fit, regrouped: ``Stage.regroup_fit``): one task per unit assigns its
   documents to their nearest centroid and writes them into buckets by cluster; one task
   per bucket computes, per cluster in hard-first order, each document's largest cosine
   to an earlier one (SemDeDup's upper triangle); the fit joins the buckets' rows into
   its table and writes a cluster report. No task holds more than a unit's or one
   cluster's vectors; the driver holds a few numbers per document.
5. ``select``: SemDeDup drops cosine > 1 − ε; DBP quotas from d_intra · d_inter and
   softmax(C / τ); each cluster keeps its n_j least prototypical documents. ``keep_ratio``,
   ``temperature``, ``epsilon``, ``num_nns`` and ``within`` only change this step, so a new
   value is a re-select: no re-embedding, no re-clustering.

Deviation (documented in the README): DBP ran on a re-clustered SemDeDup output; here the
quotas use the same clusters, with sizes and d_intra over the SemDeDup survivors.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
from pydantic import Field

from filters.base import (
    ID,
    ORDER,
    TEXT,
    Fitted,
    ModelParams,
    OverBudget,
    Phase,
    ScoreView,
    Selection,
    SqlEngine,
    Stage,
    scores_view,
    sql_list,
)
from filters.concept_cluster import (
    assign,
    default_k,
    hard_first,
    matrix,
    sample_rows,
    semdedup,
    tie_key,
    train_centroids,
)
from filters.concept_method import block_cells, dbp_quotas, inter_cluster_distance
from filters.embedders import EmbedderSpec, distill_model2vec, embedder_files, load_embedder, minilm_path, model_folder

log = logging.getLogger(__name__)

EMBEDDING = "embedding"
DISTILLED = "model2vec"
CENTROIDS = "centroids.npy"
REPORT = "clusters.json"
STREAM_BATCH = 65_536  # key rows a bucket task reads at a time


class ConceptPruneParams(ModelParams):
    execution_fields: ClassVar[frozenset[str]] = ModelParams.execution_fields | {"n_threads"}

    embedder: EmbedderSpec = Field(default_factory=lambda: EmbedderSpec.model_validate({}))
    k: int | None = Field(None, ge=1, description="clusters (default: about √n, at most 50,000)")
    niter: int = Field(100, ge=1, description="k-means iterations (SemDeDup's clustering: 100)")
    seed: int = Field(1234, description="k-means seed (SemDeDup's: 1234) and the random within-cluster order")
    max_train_points: int = Field(100_000, ge=2, description="k-means trains on a seeded sample this large")
    semdedup: bool = Field(True, description="drop semantic duplicates before the quotas")
    epsilon: float = Field(0.01, gt=0, lt=1, description="SemDeDup: drop cosine > 1 − epsilon to an earlier one")
    keep_ratio: float = Field(0.8, gt=0, le=1, description="DBP: share of the SemDeDup survivors kept (N)")
    temperature: float = Field(0.5, gt=0, description="DBP: τ of softmax(complexity / τ)")
    num_nns: int = Field(20, ge=1, description="DBP: nearest other centroids in d_inter")
    cls_bal_ratio: float = Field(0.5, ge=0, le=1, description="DBP: each cluster keeps at least N/k · this")
    within: Literal["hard", "easy", "random"] = Field("hard", description="which documents a cluster keeps: "
                                                                          "farthest from the centroid (hard), "
                                                                          "nearest (easy) or random")
    n_threads: int | None = Field(None, ge=1, description="threads per actor and for the fit (default: CPUs)")


@dataclass(frozen=True)
class Plan:
    """The corpus-wide decision, one entry per row of the cluster fit's table."""

    keep: np.ndarray
    duplicate: np.ndarray
    valid: np.ndarray
    survivor_row: np.ndarray  # a duplicate's surviving earlier neighbour (its chain's root)
    complexity: np.ndarray  # per document: its cluster's C
    quota: np.ndarray
    probability: np.ndarray
    size: np.ndarray
    dup_cos: np.ndarray  # largest cosine to an earlier member of the cluster (NaN for the first)
    orders: np.ndarray  # ascending: the fit table is in input order (select finds rows by it)
    ids: list
    labels: np.ndarray  # cluster per row, -1 for an empty document
    distance: np.ndarray
    report: dict


class ConceptPruneV1(Stage[ConceptPruneParams]):
    name = "concept_prune_v1"
    Params = ConceptPruneParams
    phases = (Phase.fit("prepare"), Phase.score("embed"), Phase.fit("train"), Phase.fit("cluster"))
    regroup_fit = "cluster"
    reasons = ("concept.empty", "concept.semantic_duplicate", "concept.pruned_prototypical",
               "concept.pruned_over_quota")
    sample_undercounts = True  # semantic duplicates are pairs
    score_params = frozenset({"embedder", "k", "niter", "seed", "max_train_points"})

    def __init__(self, params=None) -> None:
        super().__init__(params)
        self._embedder = None
        self._embedder_folder: Path | None = None
        self._plan_source: object = None
        self._plan: Plan | None = None

    # -- 1: the embedder -----------------------------------------------------------------------
    def prepare(self, view: ScoreView | None, artifacts: Path) -> None:
        spec = self.params.embedder
        if spec.kind == "model2vec" and spec.path is None:
            distill_model2vec(minilm_path(), artifacts / DISTILLED, spec.pca_dims)
        return None

    def model_files(self) -> list[str]:
        return embedder_files(self.params.embedder)

    def _threads(self) -> int:
        return self.params.n_threads or self.params.cpus_per_actor

    def embedder(self, fitted: Fitted | None):
        distilled = fitted.artifacts / DISTILLED if fitted is not None and fitted.artifacts is not None else None
        folder = model_folder(self.params.embedder, distilled)
        if self._embedder is None or self._embedder_folder != folder:
            self._embedder = load_embedder(self.params.embedder, folder, self._threads(), self.params.num_gpus > 0)
            self._embedder_folder = folder
        return self._embedder

    # -- 2: per document -----------------------------------------------------------------------
    def embed(self, docs: pa.Table, fitted: Fitted | None = None) -> pa.Table:
        texts = [t or "" for t in docs[TEXT].to_pylist()]
        present = [k for k, t in enumerate(texts) if t.strip()]
        model = self.embedder(fitted)
        vectors = model.encode([texts[k] for k in present])
        bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
        if len(bad):
            ids = docs[ID].to_pylist()
            raise ValueError(f"{self.name}: the embedder returned a non-finite vector for document "
                             f"{ids[present[bad[0]]]!r} ({len(bad)} in this unit)")
        dim = model.dim
        flat = np.zeros((len(texts), dim), np.float32)
        flat[present] = vectors
        mask = np.ones(len(texts), bool)
        mask[present] = False
        column = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), pa.float32()), dim,
                                                   mask=pa.array(mask))
        return pa.table({EMBEDDING: column})

    # -- 3: k-means, then clusters and SemDeDup a bucket of clusters at a time ----------------
    def train(self, view: ScoreView | None, artifacts: Path) -> None:
        """Spherical k-means on a seeded sample of the embeddings; the centroids are an artifact."""
        view = scores_view(view, self.name)
        p = self.params
        orders = view.sql(f'SELECT "{ORDER}" FROM scores WHERE {EMBEDDING} IS NOT NULL ORDER BY "{ORDER}"')
        n = orders.num_rows
        centroids = np.zeros((0, 0), np.float32)
        if n:
            picked = orders.take(pa.array(sample_rows(n, p.max_train_points, p.seed)))
            view.register("train_orders", picked)
            sample = matrix(view.sql(f'SELECT s.{EMBEDDING} FROM scores s JOIN train_orders t ON s."{ORDER}" = '
                                     f't."{ORDER}" ORDER BY s."{ORDER}"')[EMBEDDING])
            k = min(p.k or default_k(n), n, p.max_train_points)  # faiss: k ≤ sample
            centroids = train_centroids(sample, k, p.niter, p.seed, p.n_threads or os.cpu_count() or 1)
        _save_npy(artifacts / CENTROIDS, centroids)

    def bucket_doc_bytes(self) -> int:
        # A key row: the float32 embedding, its order, cluster and distance. An estimate
        # (it sizes the buckets; a bucket's sort spills): a folder's model may differ.
        spec = self.params.embedder
        return 4 * (spec.pca_dims if spec.kind == "model2vec" else 384) + 32

    def regroup_keys(self, scores: pa.Table, artifacts: Path) -> pa.Table:
        """A unit's embedded documents with their nearest centroid (the key) and cosine distance."""
        present = scores.filter(pc.is_valid(scores[EMBEDDING]))
        vectors = matrix(present[EMBEDDING])
        if len(vectors):
            labels, dist = assign(vectors, np.load(artifacts / CENTROIDS))
        else:
            labels, dist = np.zeros(0, np.int64), np.zeros(0)
        return pa.table({"ord": present[ORDER], "hash": pa.array(labels.astype(np.uint64) << np.uint64(32)),
                         "cluster": pa.array(labels, pa.int64()), "distance": pa.array(dist, pa.float64()),
                         EMBEDDING: present[EMBEDDING]})

    def regroup_bucket(self, sql: SqlEngine, rows: str, memory_bytes: int) -> pa.Table:
        """Each document's largest cosine to an earlier one of its cluster in hard-first
        order (``dup_cos``) and that one's order (``nearest_ord``): the bucket's rows sorted
        by cluster (DuckDB spills), one cluster at a time in memory."""
        # Counted from the cluster column alone (the vectors are read once, by the sort below);
        # every vector has the same length, so one row gives it.
        largest = sql.sql(f"SELECT cluster, count(*) AS n, sum(count(*)) OVER () AS total FROM ({rows}) "
                          f"GROUP BY cluster ORDER BY n DESC, cluster LIMIT 1").to_pylist()
        if largest:
            c, n, total = (largest[0][k] for k in ("cluster", "n", "total"))
            d = sql.sql(f"SELECT len({EMBEDDING}) AS d FROM ({rows}) LIMIT 1")["d"][0].as_py()
            # Three copies of the cluster and the batch read with it (Arrow, the joined matrix,
            # the hard-first copy) and SemDeDup's block of float32 similarities.
            need = 3 * (n + min(int(total), STREAM_BATCH)) * d * 4 + 4 * block_cells(n)
            if need > memory_bytes:
                raise OverBudget(f"concept cluster {c} ({n:,} documents of {d} dimensions; a cluster is never "
                                 f"split, a larger k makes them smaller)", need)
        parts = []
        pending: pa.Table | None = None
        for batch in sql.stream(f"SELECT ord, cluster, distance, {EMBEDDING} FROM ({rows}) ORDER BY cluster, ord",
                                STREAM_BATCH):
            table = pa.Table.from_batches([batch])
            table = table if pending is None else pa.concat_tables([pending, table])
            labels = table["cluster"].to_numpy()
            done = int(np.searchsorted(labels, labels[-1]))  # the last cluster may go on in the next batch
            if done:
                parts.append(_semdedup_clusters(table.slice(0, done)))
            pending = table.slice(done)
        if pending is not None and pending.num_rows:
            parts.append(_semdedup_clusters(pending))
        return pa.concat_tables(parts) if parts else _semdedup_clusters(None)

    def cluster(self, view: ScoreView | None, artifacts: Path) -> pa.Table:
        """The fit table: per document its cluster, distance, ``dup_cos`` and ``nearest`` (a
        row of this table), in input order, from the buckets' results (``regroup_bucket``);
        outside a job, train and one bucket run here."""
        view = scores_view(view, self.name)
        if view.bucketed is None:
            found = self._one_bucket(view, artifacts)
        elif view.bucketed.groups:
            found = view.sql(f"SELECT * FROM read_parquet({sql_list(view.bucketed.groups)}) ORDER BY ord")
        else:  # no document has an embedding
            found = _semdedup_clusters(None)
        meta = view.sql(f'SELECT id, "{ORDER}" FROM scores ORDER BY "{ORDER}"')
        orders = meta[ORDER].to_numpy(zero_copy_only=False)
        n = len(orders)
        cluster = np.full(n, -1, np.int64)
        dist, best = np.full(n, np.nan), np.full(n, np.nan)
        nearest = np.full(n, -1, np.int64)
        at = np.searchsorted(orders, found["ord"].to_numpy(zero_copy_only=False))
        cluster[at] = found["cluster"].to_numpy(zero_copy_only=False)
        dist[at] = found["distance"].to_numpy(zero_copy_only=False)
        best[at] = found["dup_cos"].to_numpy(zero_copy_only=False)
        near = found["nearest_ord"].fill_null(-1).to_numpy(zero_copy_only=False)
        nearest[at] = np.where(near >= 0, np.searchsorted(orders, near), -1)
        table = pa.table({
            ID: meta[ID], ORDER: pa.array(orders, pa.int64()),
            "cluster": pa.array(cluster, pa.int64(), mask=cluster < 0),
            "distance": pa.array(dist, pa.float64(), from_pandas=True),
            "dup_cos": pa.array(best, pa.float64(), from_pandas=True),
            "nearest": pa.array(nearest, pa.int64(), mask=nearest < 0),
        })
        report = self.plan(table, np.load(artifacts / CENTROIDS)).report
        _write_text(artifacts / REPORT, json.dumps(report, indent=1) + "\n")
        spread = report["probability_spread"]
        log.info("%s: %d clusters; P from %.4g to %.4g (max/min %.2f, normalised entropy %.3f)", self.name,
                 report["clusters"], spread["min"], spread["max"], spread["max_over_min"], spread["entropy"])
        return table

    def _one_bucket(self, view: ScoreView, artifacts: Path) -> pa.Table:
        """``train`` and one bucket in this process, for a fit called outside a job
        (benchmarks), without a memory budget; the key rows go to a scratch file beside the
        artifacts."""
        self.train(view, artifacts)
        scratch = Path(tempfile.mkdtemp(prefix=".cluster-", dir=artifacts.parent))
        writer = None
        try:
            keys = scratch / "keys.parquet"
            for batch in view.batches(columns=[ORDER, EMBEDDING]):
                rows = self.regroup_keys(pa.Table.from_batches([batch]), artifacts).drop_columns(["hash"])
                writer = writer or pq.ParquetWriter(keys, rows.schema)
                writer.write_table(rows)
            if writer is None:
                return _semdedup_clusters(None)
            writer.close()
            writer = None
            return self.regroup_bucket(view, f"SELECT * FROM read_parquet({sql_list([keys])})", 2**62)
        finally:
            if writer is not None:
                writer.close()
            shutil.rmtree(scratch, ignore_errors=True)

    # -- 4: the decision ---------------------------------------------------------------------------
    def plan(self, table: pa.Table, centroids: np.ndarray) -> Plan:
        p = self.params
        n = table.num_rows
        cluster = table["cluster"].to_numpy(zero_copy_only=False)
        valid = ~np.isnan(cluster) if cluster.dtype.kind == "f" else np.ones(n, bool)
        labels = np.where(valid, np.nan_to_num(cluster, nan=-1), -1).astype(np.int64)
        dist = table["distance"].to_numpy(zero_copy_only=False).astype(np.float64)
        dup_cos = table["dup_cos"].to_numpy(zero_copy_only=False).astype(np.float64)
        nearest = table["nearest"].to_numpy(zero_copy_only=False)
        nearest = np.where(np.isnan(nearest), -1, nearest).astype(np.int64) if nearest.dtype.kind == "f" \
            else nearest.astype(np.int64)
        duplicate = valid & p.semdedup & (np.nan_to_num(dup_cos, nan=-np.inf) > 1.0 - p.epsilon)
        survivor = valid & ~duplicate
        # A duplicate's survivor: follow nearest-earlier links to a row that stayed (pointer
        # jumping: log of the chain length passes, not one per link).
        parent = np.where(duplicate & (nearest >= 0), nearest, np.arange(n))
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
        root = np.where(duplicate, parent, -1)
        k = len(centroids)
        size = np.bincount(labels[survivor], minlength=k).astype(np.int64)
        dist_sum = np.bincount(labels[survivor], weights=dist[survivor], minlength=k)
        with np.errstate(invalid="ignore", divide="ignore"):
            d_intra = np.where(size > 0, dist_sum / np.maximum(size, 1), np.nan)
        d_inter = inter_cluster_distance(centroids, p.num_nns) if k else np.zeros(0)
        complexity = d_inter * d_intra
        live = np.flatnonzero(size > 0)
        keep_n = int(p.keep_ratio * int(survivor.sum()))
        prob = np.zeros(k)
        quota = np.zeros(k, np.int64)
        if len(live):
            prob[live], quota[live] = dbp_quotas(complexity[live], size[live], keep_n, p.temperature,
                                                 p.cls_bal_ratio)
        orders = table[ORDER].to_numpy(zero_copy_only=False).astype(np.int64)
        ids = table[ID].to_pylist()
        rank = _rank_within(labels, dist, orders, ids, survivor, p.within, p.seed)
        report = _report(p, size, d_intra, d_inter, complexity, prob, quota, int(valid.sum()),
                         int(duplicate.sum()), keep_n)
        if k == 0:  # nothing embedded: every document is empty
            none = np.full(n, np.nan)
            return Plan(keep=np.zeros(n, bool), duplicate=duplicate, valid=valid, survivor_row=root,
                        complexity=none, quota=none, probability=none, size=none, dup_cos=dup_cos, orders=orders,
                        ids=ids, labels=labels, distance=dist, report=report)
        per_doc = np.maximum(labels, 0)
        keep = survivor & (rank < quota[per_doc])
        return Plan(keep=keep, duplicate=duplicate, valid=valid, survivor_row=root, complexity=complexity[per_doc],
                    quota=quota[per_doc], probability=prob[per_doc], size=size[per_doc], dup_cos=dup_cos,
                    orders=orders, ids=ids, labels=labels, distance=dist, report=report)

    def _cached_plan(self, fitted: Fitted | None) -> Plan:
        if fitted is None or fitted.table is None:
            raise RuntimeError(f"{self.name}: select needs the cluster fit")
        if fitted.table is not self._plan_source:
            centroids = np.load(fitted.artifacts / CENTROIDS) if fitted.artifacts is not None else np.zeros((0, 0))
            self._plan = self.plan(fitted.table, centroids)
            self._plan_source = fitted.table
        assert self._plan is not None
        return self._plan

    def select(self, scores: pa.Table, fitted: Fitted | None) -> Selection:
        plan = self._cached_plan(fitted)
        unit_orders = scores[ORDER].to_numpy(zero_copy_only=False).astype(np.int64)
        rows = np.searchsorted(plan.orders, unit_orders)
        if len(rows) and (rows.max() >= len(plan.orders) or (plan.orders[rows] != unit_orders).any()):
            raise RuntimeError(f"{self.name}: documents of this unit are missing from the cluster fit")
        pruned = "concept.pruned_prototypical" if self.params.within == "hard" else "concept.pruned_over_quota"
        keep: list[bool] = []
        reason: list[str | None] = []
        cluster_id: list[str | None] = []
        survivor_id: list[str | None] = []
        survivor_kept: list[float | None] = []
        for r in rows:
            ok = bool(plan.keep[r])
            keep.append(ok)
            if not plan.valid[r]:
                reason.append("concept.empty")
            elif plan.duplicate[r]:
                reason.append("concept.semantic_duplicate")
            else:
                reason.append(None if ok else pruned)
            cluster_id.append(f"concept-{plan.labels[r]}" if plan.valid[r] else None)
            s = plan.survivor_row[r]
            dup = bool(plan.duplicate[r]) and s >= 0
            survivor_id.append(plan.ids[s] if dup else None)
            # The SemDeDup survivor may itself lose its cluster's quota afterwards.
            survivor_kept.append(float(plan.keep[s]) if dup else None)

        def col(values: np.ndarray) -> list[float | None]:
            return [float(values[r]) if plan.valid[r] else None for r in rows]

        extra = {"cluster": col(plan.labels), "distance": col(plan.distance),
                 "dup_cos": [None if np.isnan(v := plan.dup_cos[r]) else float(v) for r in rows],
                 "complexity": col(plan.complexity), "quota": col(plan.quota),
                 "cluster_p": col(plan.probability), "cluster_size": col(plan.size), "survivor_kept": survivor_kept}
        return Selection(keep=keep, reason=reason, cluster_id=cluster_id, survivor_id=survivor_id,
                         extra_scores=extra)


def _rank_within(labels: np.ndarray, dist: np.ndarray, order: np.ndarray, ids: list, survivor: np.ndarray,
                 within: str, seed: int) -> np.ndarray:
    """Each survivor's place in its cluster's keep order (0 = kept first); others n."""
    n = len(labels)
    if within == "hard":
        key = -tie_key(dist)
    elif within == "easy":
        key = tie_key(dist)
    else:
        key = np.array([xxhash.xxh3_64_intdigest(f"{seed}\0{i}".encode()) for i in ids], np.float64)
    rows = np.flatnonzero(survivor)
    ranked = rows[np.lexsort((order[rows], key[rows], labels[rows]))]
    rank = np.full(n, n, np.int64)
    if len(ranked):
        starts = np.r_[0, np.flatnonzero(np.diff(labels[ranked])) + 1]
        first = np.repeat(starts, np.diff(np.r_[starts, len(ranked)]))
        rank[ranked] = np.arange(len(ranked)) - first
    return rank


def _report(p: ConceptPruneParams, size, d_intra, d_inter, complexity, prob, quota, embedded: int,
            duplicates: int, keep_n: int) -> dict:
    live = prob[size > 0]
    k_live = max(1, len(live))
    entropy = float(-(live * np.log(np.where(live > 0, live, 1))).sum() / np.log(k_live)) if k_live > 1 else 1.0
    def r(x):
        return [None if not np.isfinite(v) else round(float(v), 6) for v in x]
    return {
        "clusters": int(len(size)), "embedded_documents": embedded, "semantic_duplicates": duplicates,
        "survivors": int(size.sum()), "keep_n": keep_n,
        "params": {"epsilon": p.epsilon, "semdedup": p.semdedup, "keep_ratio": p.keep_ratio,
                   "temperature": p.temperature, "num_nns": p.num_nns, "cls_bal_ratio": p.cls_bal_ratio,
                   "within": p.within},
        "probability_spread": {"min": float(live.min()) if len(live) else 0.0,
                               "max": float(live.max()) if len(live) else 0.0,
                               "max_over_min": float(live.max() / live.min()) if len(live) and live.min() > 0 else 0.0,
                               "entropy": entropy},
        "per_cluster": {"size": size.tolist(), "d_intra": r(d_intra), "d_inter": r(d_inter),
                        "complexity": r(complexity), "probability": r(prob), "quota": quota.tolist()},
    }


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _semdedup_clusters(rows: pa.Table | None) -> pa.Table:
    """SemDeDup over rows holding whole clusters (``ord``, ``cluster``, ``distance``, the
    embedding): per row ``dup_cos`` (NaN for a cluster's first) and ``nearest_ord``."""
    if rows is None:
        return pa.table({"ord": pa.array([], pa.int64()), "cluster": pa.array([], pa.int64()),
                         "distance": pa.array([], pa.float64()), "dup_cos": pa.array([], pa.float64()),
                         "nearest_ord": pa.array([], pa.int64())})
    ords = rows["ord"].to_numpy().astype(np.int64)
    labels = rows["cluster"].to_numpy().astype(np.int64)
    dist = rows["distance"].to_numpy().astype(np.float64)
    best, nearest = semdedup(matrix(rows[EMBEDDING]), labels, hard_first(labels, dist, ords))
    return pa.table({"ord": pa.array(ords), "cluster": pa.array(labels), "distance": pa.array(dist),
                     "dup_cos": pa.array(np.where(np.isfinite(best), best, np.nan), pa.float64(), from_pandas=True),
                     "nearest_ord": pa.array(np.where(nearest >= 0, ords[np.maximum(nearest, 0)], -1), pa.int64(),
                                             mask=nearest < 0)})
