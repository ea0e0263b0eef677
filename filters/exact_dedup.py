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
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Literal

import pyarrow as pa
import xxhash

from filters.base import FIT, ID, ORDER, SCORE, TEXT, Fitted, ScoreView, Selection, Stage, StageParams, scores_view


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

    def score(self, docs: pa.Table) -> pa.Table:
        hashes = [
            xxhash.xxh3_128_hexdigest(normalise(t or "", self.params).encode("utf-8"))
            for t in docs[TEXT].to_pylist()
        ]
        return pa.table({"text_hash": pa.array(hashes, pa.string())})

    def fit(self, view: ScoreView | None, artifacts: Path) -> pa.Table:
        """Per hash: the survivor (first in input order) and the group size."""
        scores = scores_view(view, self.name).read([ID, ORDER, "text_hash"])
        groups = scores.group_by("text_hash").aggregate([(ORDER, "min"), (ID, "count")])
        # ORDER is unique in a job, so this join finds exactly one survivor per hash.
        firsts = groups.join(scores.select([ID, ORDER]), keys=f"{ORDER}_min", right_keys=ORDER)
        return pa.table({
            "text_hash": firsts["text_hash"],
            "survivor_id": firsts[ID],
            "group_size": firsts[f"{ID}_count"],
        })

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
        for doc_id, s, size, h in zip(ids, survivor, sizes, hashes, strict=True):
            if s is None:
                raise ValueError(f"document {doc_id!r} was not seen by exact_dedup_v1.fit")
            in_group = size > 1
            keep.append(s == doc_id)
            reason.append(None if s == doc_id else "exact_dedup.duplicate")
            cluster.append(h if in_group else None)
            surv.append(s if in_group else None)
        return Selection(
            keep=keep, reason=reason, cluster_id=cluster, survivor_id=surv,
            extra_scores={"group_size": [float(x) for x in sizes]},
        )
