"""One stage's lineage as a single flat Parquet file that any Parquet reader loads.

Lineage stores ``scores`` as an Arrow ``map<string, double>``, which Hugging Face
``datasets`` cannot load. ``export_scores`` reads the stage's decision files of a job
folder (every finished work unit, in plan order) and writes one Parquet file with
``doc_id``, ``parent_id``, ``decision``, ``reason``, ``change``, ``cluster_id``,
``survivor_id``, ``detail`` (JSON text) and the scores either

* ``wide`` (default): one float64 column ``score_<name>`` per score name the stage
  recorded (in the order first seen), null where a document has no such score; or
* ``struct``: one ``scores`` column, a struct with a float64 field per score name
  (null for a document whose scores are null).

A stage that recorded no scores at all gets no score columns. The file is written
atomically (temporary name, then rename).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workers import atomic
from workers.job_folder import JobFolder, UnknownStage

FORMATS = ("wide", "struct")
COLUMNS = ("doc_id", "parent_id", "decision", "reason", "change", "cluster_id", "survivor_id", "detail")
SCORE_PREFIX = "score_"


class ExportError(ValueError):
    """The job folder or stage cannot be exported (not a job, unknown stage, no lineage yet)."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    rows: int
    stage_index: int
    stage: str
    score_names: list[str]
    units: int  # work units of the job
    missing_units: int  # units without a decision file for this stage (job not finished)


def resolve_stage(folder: JobFolder, stage: str) -> dict:
    try:
        return folder.stage(stage)
    except UnknownStage as exc:
        raise ExportError(str(exc)) from None


def _score_names(tables: list[pa.Table]) -> list[str]:
    names: dict[str, None] = {}
    for table in tables:
        scores = table["scores"]
        entries = scores.cast(pa.list_(pa.struct([scores.type.key_field, scores.type.item_field])))
        for key in pc.unique(pc.struct_field(pc.list_flatten(entries), 0)).to_pylist():
            names.setdefault(key, None)
    return list(names)


def _flatten(table: pa.Table, names: list[str], fmt: str) -> pa.Table:
    n = table.num_rows
    columns: dict[str, pa.Array | pa.ChunkedArray] = {}
    for name in COLUMNS:
        columns[name] = table[name].cast(pa.string()) if name in table.column_names else pa.nulls(n, pa.string())
    scores = table["scores"].combine_chunks() if n else pa.array([], table.schema.field("scores").type)
    values = [pc.map_lookup(scores, pa.scalar(k, pa.string()), "first").cast(pa.float64()) for k in names]
    if fmt == "wide":
        for k, v in zip(names, values, strict=True):
            columns[f"{SCORE_PREFIX}{k}"] = v
    elif names:
        columns["scores"] = pa.StructArray.from_arrays(values, names=names, mask=scores.is_null())
    return pa.table(columns)


def export_scores(output_folder: str | Path, stage: str, out_path: str | Path, fmt: str = "wide") -> ExportResult:
    """Write the lineage of ``stage`` (name, index or ``NN-name``) of the job in
    ``output_folder`` to ``out_path`` as one Parquet file; see the module docstring."""
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    folder = JobFolder(output_folder)
    if not folder.started():
        raise ExportError(f"{folder.root} is not a curate job folder (no job.json)")
    st = resolve_stage(folder, stage)
    units = folder.units()
    paths = [folder.decisions(st["index"], st["name"], u["key"]) for u in units]
    present = [p for p in paths if p.exists()]
    if not present:
        raise ExportError(f"stage {st['index']:02d}-{st['name']} of {folder.root} has no lineage yet "
                          "(no work unit has finished it)")
    tables = []
    for p in present:
        table = pq.read_table(p)
        wanted = [c for c in (*COLUMNS, "scores") if c in table.column_names]
        tables.append(table.select(wanted))
    names = _score_names(tables)
    table = pa.concat_tables([_flatten(t, names, fmt) for t in tables])
    job = folder.job()
    table = table.replace_schema_metadata({
        b"curate.job_id": str(job.get("job_id", "")).encode(), b"curate.stage": st["name"].encode(),
        b"curate.stage_index": str(st["index"]).encode(), b"curate.format": fmt.encode()})
    out = Path(out_path)
    atomic.write_parquet(table, out)
    return ExportResult(path=out, rows=table.num_rows, stage_index=st["index"], stage=st["name"], score_names=names,
                        units=len(units), missing_units=len(paths) - len(present))
