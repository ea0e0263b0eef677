"""``exact_dedup_v1``: one survivor per group of documents whose normalised text is equal.

Normalisation (each step switchable in the spec), applied in this order:
  1. Unicode normal form (default NFC, so composed and decomposed accents match);
  2. lowercase (``str.lower``);
  3. every run of whitespace (spaces, tabs, newlines, NBSP, ...) becomes one space,
     and leading/trailing whitespace is removed.
The normalised text is hashed with xxh3-128 (collisions are negligible at 2^-64 for
billions of documents). The survivor of a group is the document that comes first in
the job's input order (shard order, then row), so reruns and any worker count pick
the same one. Every member of a group of two or more records the group hash as its
cluster id and the survivor's id.

The fit is a GROUP BY in the view's DuckDB (out of core), and its table holds the groups
of two or more only: every worker loads it in ``select``, and at web scale the distinct
hashes are the corpus while the duplicate groups are a few percent of it. A hash not in
the table is a group of one. A bucketed fit (``workers/bucketed_fit.py``) hashes the text
hashes into buckets; a task per bucket gives each group as a star of pairs from its first
member (nothing to verify: equal hashes are the verdict), and the fit builds the same
table from those edges.

Against an index (``against = INDEX_DIR``, a fit parameter): ``curate index add`` stores the
text hashes of a finished job's survivors when that job ran ``exact_dedup_v1``
(``filters/minhash_index.py``); the normalisation switches must be the index's. Every new
document whose hash is in the index is removed, reason ``exact_dedup.indexed_duplicate``,
``survivor_id`` the indexed document's id and ``cluster_id`` ``<job_id>:<its id>`` (the
least such string when several jobs hold the hash), the first of its group included:
the group's survivor is already curated. The fit table then also holds those hashes,
groups of one included (column ``indexed``).
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import xxhash
from pydantic import Field

from filters.base import (
    FIT,
    ID,
    ORDER,
    SCORE,
    TEXT,
    Fitted,
    OptionalInputPath,
    ScoreView,
    Selection,
    SqlEngine,
    Stage,
    StageParams,
    scores_view,
    sql_list,
)
from filters.minhash_index import EXACT_MATCH_PARAMS, check_against, open_against


class ExactDedupParams(StageParams):
    unicode_form: Literal["NFC", "NFKC", "none"] = "NFC"
    lowercase: bool = True
    collapse_whitespace: bool = True
    against: OptionalInputPath = Field(
        None, description="an index folder (`curate index add`) holding exact-dedup hashes: also remove new documents "
        "equal to a curated one (reason exact_dedup.indexed_duplicate); its normalisation switches must match")


def normalise(text: str, params: ExactDedupParams) -> str:
    if params.unicode_form != "none":
        text = unicodedata.normalize(params.unicode_form, text)
    if params.lowercase:
        text = text.lower()
    if params.collapse_whitespace:
        text = " ".join(text.split())  # str.split() splits on runs of Unicode whitespace
    return text


class ExactDedupV1(Stage[ExactDedupParams]):
    name = "exact_dedup_v1"
    Params = ExactDedupParams
    phases = (SCORE, FIT)
    reasons = ("exact_dedup.duplicate", "exact_dedup.indexed_duplicate")
    sample_undercounts = True
    score_params = frozenset(EXACT_MATCH_PARAMS)
    fit_params = frozenset({"against"})
    bucket_by = "text_hash"

    def score(self, docs: pa.Table) -> pa.Table:
        hashes = [
            xxhash.xxh3_128_hexdigest(normalise(t or "", self.params).encode("utf-8"))
            for t in docs[TEXT].to_pylist()
        ]
        return pa.table({"text_hash": pa.array(hashes, pa.string())})

    def fit(self, view: ScoreView | None, artifacts: Path) -> pa.Table:
        """Per group of two or more, and per hash in the ``against`` index: its hash,
        survivor (first in input order), size and the indexed document (``job:id``) if any."""
        view = scores_view(view, self.name)
        index = None
        if self.params.against is not None:
            parts = open_against(self.params.against, artifacts, self.params.model_dump(), self.name).hash_parts
            index = f"""SELECT text_hash, min(job_id || ':' || id) AS indexed
                        FROM read_parquet({sql_list(parts)}) GROUP BY text_hash"""  # job ids hold no ':'
        if view.bucketed is None:
            groups = f"""SELECT text_hash, arg_min({ID}, "{ORDER}") AS survivor_id, count(*) AS group_size
                         FROM scores GROUP BY text_hash"""
            if index is None:
                return view.sql(f"SELECT *, NULL::VARCHAR AS indexed FROM ({groups}) WHERE group_size > 1 "
                                "ORDER BY text_hash")
            return view.sql(f"""
                SELECT g.*, i.indexed FROM ({groups}) g LEFT JOIN ({index}) i USING (text_hash)
                WHERE g.group_size > 1 OR i.indexed IS NOT NULL ORDER BY g.text_hash
            """)
        # Each group is a star from its first member (``bucket_pairs``): ``a`` is the survivor.
        edges = view.bucketed.edges
        groups = (f"""SELECT s.text_hash, s.{ID} AS survivor_id, g.group_size
                      FROM (SELECT a, count(*) + 1 AS group_size FROM read_parquet({sql_list(edges)}) GROUP BY a) g
                      JOIN scores s ON s."{ORDER}" = g.a""" if edges else
                  f"SELECT text_hash, {ID} AS survivor_id, 0::BIGINT AS group_size FROM scores LIMIT 0")
        if index is None:
            return view.sql(f"SELECT *, NULL::VARCHAR AS indexed FROM ({groups}) ORDER BY text_hash")
        # Groups of one that the index holds are not in any bucket's edges: found by a join.
        return view.sql(f"""
            WITH groups AS ({groups}), indexed AS ({index})
            SELECT g.*, i.indexed FROM groups g LEFT JOIN indexed i USING (text_hash)
            UNION ALL
            SELECT s.text_hash, s.{ID}, 1, i.indexed FROM scores s JOIN indexed i USING (text_hash)
            WHERE s.text_hash NOT IN (SELECT text_hash FROM groups)
            ORDER BY text_hash
        """)

    def preflight(self) -> None:
        if self.params.against is not None:
            check_against(self.params.against, self.params.model_dump(), self.name)

    def bucket_keys(self, scores: pa.Table) -> pa.Table:
        hashes = scores["text_hash"].cast(pa.string()).to_pylist()  # untyped when no document reached the unit
        high = np.array([int(h[:16], 16) for h in hashes], np.uint64)  # xxh3 bits: already uniform
        return pa.table({"key": pa.array(hashes, pa.string()),
                         "ord": scores[ORDER].cast(pa.int64()), "hash": pa.array(high, pa.uint64())})

    def bucket_pairs(self, sql: SqlEngine, keys: str) -> pa.Table:
        # A hash lies wholly in one bucket, so each group is found once, whole.
        return sql.sql(f"""
            WITH k AS ({keys}), firsts AS (SELECT key, min(ord) AS a FROM k GROUP BY key HAVING count(*) > 1)
            SELECT f.a, k.ord AS b FROM k JOIN firsts f USING (key) WHERE k.ord > f.a
        """)

    def verify_bucket(self, sql: SqlEngine, pairs: str, ends: str | None) -> pa.Table:
        return sql.sql(f"SELECT a, b, 1.0::DOUBLE AS sim FROM {pairs}")

    def select(self, scores: pa.Table, fitted: Fitted | None) -> Selection:
        if fitted is None or fitted.table is None:
            raise ValueError("exact_dedup_v1.select needs the result of fit()")
        lookup = pa.table({"text_hash": scores["text_hash"], "_pos": pa.array(range(len(scores)), pa.int64())})
        joined = lookup.join(fitted.table, "text_hash", join_type="left outer").sort_by("_pos")
        ids = scores[ID].to_pylist()
        survivor = joined["survivor_id"].to_pylist()
        sizes = joined["group_size"].to_pylist()
        # Fit tables of jobs made before ``against`` have no column ``indexed``.
        indexed = joined["indexed"].to_pylist() if "indexed" in joined.column_names else [None] * len(ids)
        hashes = scores["text_hash"].to_pylist()
        keep: list[bool] = []
        reason: list[str | None] = []
        cluster: list[str | None] = []
        surv: list[str | None] = []
        size: list[float | None] = []
        for doc_id, s, n, h, ref in zip(ids, survivor, sizes, hashes, indexed, strict=True):
            size.append(1.0 if n is None else float(n))
            if ref is not None:  # already curated: every copy goes, the group's first too
                keep.append(False)
                reason.append("exact_dedup.indexed_duplicate")
                cluster.append(ref)
                surv.append(ref.split(":", 1)[1])
                continue
            # Not in the table: a group of one (the fit keeps groups of two or more only; the
            # tables of jobs fitted before that have a row of size 1 for it).
            in_group = s is not None and n > 1
            keep.append(not in_group or s == doc_id)
            reason.append("exact_dedup.duplicate" if in_group and s != doc_id else None)
            cluster.append(h if in_group else None)
            surv.append(s if in_group else None)
        return Selection(keep=keep, reason=reason, cluster_id=cluster, survivor_id=surv,
                         extra_scores={"group_size": size})
