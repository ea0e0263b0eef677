"""What a step records, as Arrow tables: lineage rows, a transform's new version of the
documents, and per-unit statistics. Pure pyarrow (no Ray, no files), shared by the Ray
runner and the in-process runner so both record exactly the same thing.

The documents a stage sees (a *docs* table) have ``id``, ``text``, ``row`` (the input row
of the document, or of the source it was created from), ``order`` and ``parent_id``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from filters.base import DETAIL, DROP, EDIT, ID, ORDER, PARENT_ID, TEXT, Selection, Transformed

ROW = "row"
KEEP, DROPPED = "keep", "drop"
EDITED, CREATED = "edited", "created"
SCORES_MAP = pa.map_(pa.string(), pa.float64())
VERSION_COLUMNS = (ID, TEXT, ROW, PARENT_ID, DETAIL)
LINEAGE_SCHEMA = pa.schema([
    ("job_id", pa.string()), ("stage_index", pa.int32()), ("stage", pa.string()), ("shard", pa.string()),
    ("unit", pa.string()), (ROW, pa.int64()), ("doc_id", pa.string()), (PARENT_ID, pa.string()),
    ("decision", pa.string()), ("reason", pa.string()), ("change", pa.string()), ("scores", SCORES_MAP),
    ("cluster_id", pa.string()), ("survivor_id", pa.string()), (DETAIL, pa.string()),
])


@dataclass(frozen=True)
class Where:
    """Which job, stage and unit a step records for."""

    job_id: str
    stage_index: int
    stage: str
    shard: str  # input shard path
    unit: str  # unit key


def created_id(parent_id: str, stage: str, variant: str) -> str:
    """A new document's id: deterministic from its parent, the stage and the variant, so a
    rerun creates the same ids. 96 bits of xxh3-128: collisions are negligible (~1e-11
    among 10^9 created documents)."""
    key = "\0".join((parent_id, variant)).encode()
    return f"{stage}-{xxhash.xxh3_128_hexdigest(key)[:24]}"


def order_of(unit_index: int, n: int) -> pa.Array:
    """Orders of a unit's documents: the unit's place in the input, then the position."""
    return pa.array([(unit_index << 32) | i for i in range(n)], pa.int64())


def numeric_scores(tables: list[pa.Table], extra: dict[str, list[float | None]] | None, n: int) -> pa.Array:
    """Every numeric score of each doc (from every scoring phase, then ``extra``) as one
    map column, so lineage has one schema whatever the stage."""
    columns: dict[str, list] = {}
    for scores in tables:
        for name in scores.column_names:
            t = scores[name].type
            if name not in (ID, ROW, ORDER) and (pa.types.is_integer(t) or pa.types.is_floating(t)
                                                 or pa.types.is_boolean(t)):
                columns[name] = pc.cast(scores[name], pa.float64()).to_pylist()
    columns.update(extra or {})
    return pa.array([[(k, v[i]) for k, v in columns.items() if v[i] is not None] for i in range(n)], SCORES_MAP)


def _strings(values: list | None, n: int) -> pa.Array:
    return pa.array(values if values is not None else [None] * n, pa.string())


def lineage_table(where: Where, docs: pa.Table, decision: list[str], reason: list, change: list,
                  scores: pa.Array, cluster_id: list | None = None, survivor_id: list | None = None,
                  detail: list | None = None) -> pa.Table:
    n = docs.num_rows
    return pa.table({
        "job_id": pa.array([where.job_id] * n, pa.string()),
        "stage_index": pa.array([where.stage_index] * n, pa.int32()),
        "stage": pa.array([where.stage] * n, pa.string()),
        "shard": pa.array([where.shard] * n, pa.string()),
        "unit": pa.array([where.unit] * n, pa.string()),
        ROW: docs[ROW],
        "doc_id": docs[ID],
        PARENT_ID: docs[PARENT_ID],
        "decision": pa.array(decision, pa.string()),
        "reason": _strings(reason, n),
        "change": _strings(change, n),
        "scores": scores,
        "cluster_id": _strings(cluster_id, n),
        "survivor_id": _strings(survivor_id, n),
        DETAIL: _strings(detail, n),
    }, schema=LINEAGE_SCHEMA)


def selection_lineage(where: Where, docs: pa.Table, score_tables: list[pa.Table], sel: Selection) -> pa.Table:
    n = docs.num_rows
    if len(sel.keep) != n:
        raise ValueError(f"{where.stage}.select returned {len(sel.keep)} decisions for {n} documents")
    return lineage_table(where, docs, [KEEP if k else DROPPED for k in sel.keep], sel.reason, [None] * n,
                         numeric_scores(score_tables, sel.extra_scores, n), sel.cluster_id, sel.survivor_id)


def _chars(texts: list[str | None]) -> list[float]:
    return [float(len(t or "")) for t in texts]


def detail_json(detail: dict) -> str | None:
    return json.dumps(detail, sort_keys=True, ensure_ascii=False) if detail else None


def apply_transform(where: Where, docs: pa.Table, result: Transformed) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Returns (the new version of the documents, lineage rows, the scores of the inputs).

    In the new version each kept or edited input is followed by the documents created
    from it, so input order is kept and new documents sit right after their source. A
    created document with a ``reason`` (a failed attempt) is in lineage only."""
    n = docs.num_rows
    if len(result.action) != n:
        raise ValueError(f"{where.stage}.transform returned {len(result.action)} actions for {n} documents")
    ids, texts, rows = docs[ID].to_pylist(), docs[TEXT].to_pylist(), docs[ROW].to_pylist()
    parents = docs[PARENT_ID].to_pylist()
    details = docs[DETAIL].to_pylist() if DETAIL in docs.column_names else [None] * n
    children: dict[int, list] = {}
    for new in result.created:
        children.setdefault(new.parent, []).append(new)
    version: dict[str, list] = {c: [] for c in VERSION_COLUMNS}
    lineage_rows: dict[str, list] = {c: [] for c in (ID, ROW, PARENT_ID, "decision", "reason", "change", "scores",
                                                     DETAIL)}
    input_scores = numeric_scores([result.scores] if result.scores is not None else [], {
        "chars_before": _chars(texts),
        "chars_after": [None if a == DROP else float(len(t if a == EDIT else (texts[i] or "")))
                        for i, (a, t) in enumerate(zip(result.action, result.text, strict=True))],
    }, n).to_pylist()

    def emit(doc_id, text, row, parent, decision, reason, change, scores, detail, into_version):
        for col, value in zip(lineage_rows, (doc_id, row, parent, decision, reason, change, scores, detail),
                              strict=True):
            lineage_rows[col].append(value)
        if into_version:
            for col, value in zip(VERSION_COLUMNS, (doc_id, text, row, parent, detail), strict=True):
                version[col].append(value)

    for i in range(n):
        action = result.action[i]
        text = result.text[i] if action == EDIT else texts[i]
        emit(ids[i], text, rows[i], parents[i], DROPPED if action == DROP else KEEP, result.reason[i],
             EDITED if action == EDIT else None, input_scores[i], details[i], action != DROP)
        if result.detail is not None and result.detail[i]:  # the stage's facts, in lineage only
            lineage_rows[DETAIL][-1] = detail_json(result.detail[i])
        for new in children.get(i, []):
            scores = [("chars_after", float(len(new.text)))] if new.reason is None else []
            scores += [(k, float(v)) for k, v in new.scores.items() if v is not None]
            emit(created_id(ids[i], where.stage, new.variant), new.text, rows[i], ids[i],
                 KEEP if new.reason is None else DROPPED, new.reason, CREATED, scores, detail_json(new.detail),
                 new.reason is None)
    new_docs = pa.table({ID: pa.array(version[ID], pa.string()), TEXT: pa.array(version[TEXT], pa.string()),
                         ROW: pa.array(version[ROW], pa.int64()), PARENT_ID: pa.array(version[PARENT_ID], pa.string()),
                         DETAIL: pa.array(version[DETAIL], pa.string())})
    touched = pa.table({ID: pa.array(lineage_rows[ID], pa.string()), ROW: pa.array(lineage_rows[ROW], pa.int64()),
                        PARENT_ID: pa.array(lineage_rows[PARENT_ID], pa.string())})
    lineage = lineage_table(where, touched, lineage_rows["decision"], lineage_rows["reason"], lineage_rows["change"],
                            pa.array(lineage_rows["scores"], SCORES_MAP), detail=lineage_rows[DETAIL])
    scores = pa.table({ID: docs[ID], ROW: docs[ROW], ORDER: docs[ORDER]})
    if result.scores is not None:
        for name in result.scores.column_names:
            scores = scores.append_column(name, result.scores[name])
    return new_docs, lineage, scores


def unit_stats(where: Where, lineage: pa.Table, bytes_in: int, bytes_out: int, seconds: float | None,
               stage_stats: dict[str, float] | None = None) -> dict:
    """docs in / kept / dropped / created / edited and reasons of one unit at one stage.
    ``created`` counts new documents that entered the new version; ``created_rejected``
    those recorded as failed attempts (their reasons in ``created_reasons``)."""
    decision, change = lineage["decision"].to_pylist(), lineage["change"].to_pylist()
    reasons = lineage["reason"].to_pylist()
    is_created = [c == CREATED for c in change]
    created = sum(c and d == KEEP for c, d in zip(is_created, decision, strict=True))
    kept = sum(d == KEEP and not c for d, c in zip(decision, is_created, strict=True))
    docs_in = len(decision) - sum(is_created)
    return {
        "stage_index": where.stage_index, "stage": where.stage, "shard": where.shard, "unit": where.unit,
        "docs_in": docs_in, "kept": kept, "dropped": docs_in - kept, "created": created,
        "created_rejected": sum(is_created) - created,
        "edited": sum(c == EDITED for c in change), "docs_out": kept + created,
        "reasons": dict(Counter(r for r, d, c in zip(reasons, decision, is_created, strict=True)
                                if r is not None and d == DROPPED and not c)),
        "created_reasons": dict(Counter(r for r, d, c in zip(reasons, decision, is_created, strict=True)
                                        if r is not None and d == DROPPED and c)),
        "stage_stats": dict(stage_stats or {}),
        "text_bytes_in": bytes_in, "text_bytes_out": bytes_out, "score_seconds": seconds,
    }


def text_bytes(docs: pa.Table) -> int:
    return int(pc.sum(pc.binary_length(docs[TEXT])).as_py() or 0)
