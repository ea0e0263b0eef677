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
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import xxhash

from filters.base import (
    FIT,
    ID,
    ORDER,
    SCORE,
    TEXT,
    Fitted,
    ScoreView,
    Selection,
    SqlEngine,
    Stage,
    StageParams,
    scores_view,
    sql_list,
)


class ExactDedupParams(StageParams):
    unicode_form: Literal["NFC", "NFKC", "none"] = "NFC"
    lowercase: bool = True
    collapse_whitespace: bool = True


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
    reasons = ("exact_dedup.duplicate",)
    sample_undercounts = True
    score_params = frozenset(ExactDedupParams.model_fields)
    bucket_by = "text_hash"

    def score(self, docs: pa.Table) -> pa.Table:
        hashes = [
            xxhash.xxh3_128_hexdigest(normalise(t or "", self.params).encode("utf-8"))
            for t in docs[TEXT].to_pylist()
        ]
        return pa.table({"text_hash": pa.array(hashes, pa.string())})

    def fit(self, view: ScoreView | None, artifacts: Path) -> pa.Table:
        """Per group of two or more: its hash, survivor (first in input order) and size."""
        view = scores_view(view, self.name)
        if view.bucketed is None:
            return view.sql(f"""
                SELECT text_hash, arg_min({ID}, "{ORDER}") AS survivor_id, count(*) AS group_size
                FROM scores GROUP BY text_hash HAVING count(*) > 1 ORDER BY text_hash
            """)
        if not view.bucketed.edges:  # no bucket had a group
            return view.sql("SELECT text_hash, id AS survivor_id, 0::BIGINT AS group_size FROM scores LIMIT 0")
        # Each group is a star from its first member (``bucket_pairs``): ``a`` is the survivor.
        return view.sql(f"""
            WITH groups AS (SELECT a, count(*) + 1 AS group_size
                            FROM read_parquet({sql_list(view.bucketed.edges)}) GROUP BY a)
            SELECT s.text_hash, s.{ID} AS survivor_id, g.group_size
            FROM groups g JOIN scores s ON s."{ORDER}" = g.a ORDER BY s.text_hash
        """)

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
        hashes = scores["text_hash"].to_pylist()
        keep, reason, cluster, surv = [], [], [], []
        size: list[float | None] = []
        for doc_id, s, n, h in zip(ids, survivor, sizes, hashes, strict=True):
            # Not in the table: a group of one (the fit keeps groups of two or more only).
            keep.append(s is None or s == doc_id)
            reason.append(None if s is None or s == doc_id else "exact_dedup.duplicate")
            cluster.append(None if s is None else h)
            surv.append(s)
            size.append(1.0 if n is None else float(n))
        return Selection(keep=keep, reason=reason, cluster_id=cluster, survivor_id=surv,
                         extra_scores={"group_size": size})
