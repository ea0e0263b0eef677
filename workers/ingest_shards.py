"""Shards of ``curate ingest``: ``_Shards`` cuts the stream of pieces into shards, writes
them and unifies their schema; ``_Ids`` checks ids for duplicates over the whole ingest.
Kept apart from reading (``workers.ingest``, ``workers.ingest_columns``): it only sees
the ``_Piece`` objects, whatever path made them.

All shards of one ingest share one schema (see ``_Shards``): a field's values keep their
type where the ingest agrees on it, and a field that is nested or of mixed types is JSON
text in every shard (a number Arrow read as a double, such as an int beyond int64 or an
int among floats, is then spelled as one: ``1e+20``, ``2.0``). Duplicate ids are found
over the whole ingest, once it is read, without a Python set of ids (see ``_Ids``); a
bad record anywhere in the input is therefore reported before a duplicate.
"""

from __future__ import annotations

import bisect
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workers import atomic
from workers.ingest_columns import _ARROW, _NULL, _conform, _Piece, _unify

if TYPE_CHECKING:
    from workers.ingest import IngestResult


class _Ids:
    """Duplicate ids over the whole ingest without a Python dict of them. Ids are kept as Arrow
    string arrays (a few bytes each, no Python objects) up to ``ID_MEMORY_BYTES``, then checked
    with a hash aggregation; an ingest with more ids drops them and lets DuckDB aggregate the
    ``id`` column of the written shards instead, spilling to disk beyond its memory limit, so
    tens of millions of rows stay in bounded memory. Either way the answer is the earliest row
    whose id an earlier row had (what the per-record check reported) and that earlier row."""

    def __init__(self, memory_bytes: int, duckdb_memory_limit: str) -> None:
        # ``ID_MEMORY_BYTES`` and ``DUCKDB_MEMORY_LIMIT`` of workers.ingest, read when the ingest starts
        self.memory_bytes, self.duckdb_memory_limit = memory_bytes, duckdb_memory_limit
        self.arrays: list[pa.Array] = []
        self.nbytes = 0
        self.spilled = False

    def add(self, ids: pa.ChunkedArray) -> None:
        if self.spilled:
            return
        self.arrays.extend(ids.chunks)
        self.nbytes += ids.nbytes
        if self.nbytes > self.memory_bytes:
            self.arrays, self.spilled = [], True

    def first_repeat(self, shards: list[Path], rows: list[int]) -> tuple[str, int, int] | None:
        """(id, row, row that first had it), rows counted over the whole ingest; None if all unique."""
        if self.spilled:
            return self._first_repeat_duckdb(shards, rows, self.duckdb_memory_limit)
        ids = pa.chunked_array(self.arrays, pa.string())
        if pc.count_distinct(ids).as_py() == len(ids):
            return None
        t = pa.table({"id": ids, "pos": pa.array(np.arange(len(ids), dtype=np.int64))})
        counts = t.group_by("id").aggregate([("pos", "min"), ("pos", "count")])
        dups = counts.filter(pc.greater(counts["pos_count"], 1))
        if not dups.num_rows:
            return None
        rows_of_dups = t.filter(pc.is_in(t["id"], value_set=dups["id"]))
        joined = rows_of_dups.join(dups.select(["id", "pos_min"]), "id")
        repeats = joined.filter(pc.greater(joined["pos"], joined["pos_min"])).sort_by("pos")
        first = repeats.slice(0, 1).to_pylist()[0]
        return first["id"], first["pos"], first["pos_min"]

    @staticmethod
    def _first_repeat_duckdb(shards: list[Path], rows: list[int], memory_limit: str) -> tuple[str, int, int] | None:
        import duckdb

        if not shards:
            return None
        files = [str(p) for p in shards]
        bases = np.concatenate(([0], np.cumsum(rows[:-1], dtype=np.int64)))
        spill = Path(tempfile.mkdtemp(prefix=".dedup-", dir=shards[0].parent))
        con = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": str(spill),
                                     "preserve_insertion_order": False})
        try:
            con.register("shards", pa.table({"filename": files, "base": pa.array(bases, pa.int64())}))
            found = con.execute(
                """WITH t AS (SELECT p.id, s.base + p.file_row_number AS pos
                              FROM read_parquet($files, filename = true, file_row_number = true) p
                              JOIN shards s USING (filename)),
                        d AS (SELECT id, min(pos) AS first FROM t GROUP BY id HAVING count(*) > 1)
                   SELECT t.id, t.pos, d.first FROM t JOIN d USING (id)
                   WHERE t.pos > d.first ORDER BY t.pos LIMIT 1""",
                {"files": files},
            ).fetchone()
        finally:
            con.close()
            shutil.rmtree(spill, ignore_errors=True)
        return (str(found[0]), int(found[1]), int(found[2])) if found else None


class _Shards:
    """Cuts the stream of pieces into shards at ``shard_rows`` docs or ``max_bytes`` of text,
    writing each shard (atomically) as soon as it fills.

    One schema for all shards, in bounded memory: a shard is written typed with what the ingest
    has seen so far (its own fields, plus all-null columns for fields only earlier shards had),
    and the kinds it was written with are remembered (a few bytes a field). Only a later shard
    that brings a new field or widens a field's kind (all null → int, int → float, str → JSON
    text...) leaves earlier shards unlike the final schema; at the end each such shard is read
    back, converted and atomically rewritten, one at a time. Memory stays at about one shard
    however long the ingest, where holding shards back until the schema is known could mean
    holding the whole output; homogeneous input (the usual case) rewrites nothing."""

    def __init__(self, out: Path, prefix: str, shard_rows: int, max_bytes: int | None, result: IngestResult,
                 ids: _Ids):
        self.out, self.prefix, self.shard_rows, self.max_bytes, self.result = out, prefix, shard_rows, max_bytes, result
        self.pending: list[tuple[pa.Table, dict[str, str]]] = []
        self.rows = self.text_bytes = 0
        self.order: dict[str, None] = {}  # every field in order of first appearance
        self.kinds: dict[str, str] = {}  # the ingest's kind of every field so far
        self.written: list[tuple[list[str], dict[str, str]]] = []  # each shard's columns and kinds
        self.starts: list[int] = []  # first ingest row of each piece, and where its rows come from:
        self.sources: list[tuple[int, int]] = []  # (input file, record number)
        self.total = 0
        self.ids = ids
        # Shards are written on a thread while the next one fills; at most one write is in
        # flight, so memory holds two shards at most.
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="ingest-write")
        self.writing: Future | None = None

    def add(self, piece: _Piece) -> None:
        n = piece.table.num_rows
        if not n:
            return
        self.starts.append(self.total)
        self.sources.append((piece.file, piece.first))
        self.total += n
        self.ids.add(piece.ids)
        for name, kind in piece.kinds.items():
            self.order.setdefault(name)
            self.kinds[name] = _unify(self.kinds.get(name, _NULL), kind)
        cum = None
        if self.max_bytes is not None:
            lengths = pc.binary_length(piece.table["text"].cast(pa.string())).fill_null(0)
            cum = np.cumsum(lengths.to_numpy(), dtype=np.int64)
        start = 0
        while start < n:
            stop = min(n, start + max(self.shard_rows - self.rows, 1))
            before = 0
            if cum is not None:
                before = int(cum[start - 1]) if start else 0
                # the first row at which the shard's text reaches max_bytes closes it
                stop = min(stop, int(np.searchsorted(cum, self.max_bytes - self.text_bytes + before)) + 1)
                self.text_bytes += int(cum[stop - 1]) - before
            self.pending.append((piece.table.slice(start, stop - start), piece.kinds))
            self.rows += stop - start
            if self.rows >= self.shard_rows or (cum is not None and self.text_bytes >= self.max_bytes):
                self.flush()
            start = stop

    def _path(self, index: int) -> Path:
        return self.out / f"{self.prefix}-{index:05d}.parquet"

    def _write(self, table: pa.Table, index: int) -> None:
        path = self._path(index)
        atomic.write_parquet(table, path)
        self.result.files[index] = {"path": path.name, "rows": table.num_rows, "bytes": path.stat().st_size,
                                    "sha256": atomic.sha256_file(path)}

    def flush(self) -> None:
        if not self.pending:
            return
        order, kinds = list(self.order), dict(self.kinds)
        table = pa.concat_tables([_conform(t, k, order, kinds) for t, k in self.pending])
        self.pending, self.rows, self.text_bytes = [], 0, 0
        self.wait()
        self.result.files.append({})
        self.writing = self.pool.submit(self._write, table, len(self.written))
        self.written.append((order, kinds))
        self.result.rows += table.num_rows

    def wait(self) -> None:
        """Until the shard being written is on disk (its error, if any, raised here)."""
        writing, self.writing = self.writing, None
        if writing is not None:
            writing.result()

    def source(self, row: int) -> tuple[int, int]:
        """(input file, record number) of an ingest row."""
        i = bisect.bisect_right(self.starts, row) - 1
        file, first = self.sources[i]
        return file, first + row - self.starts[i]

    def first_repeat(self) -> tuple[str, int, int] | None:
        return self.ids.first_repeat([self._path(i) for i in range(len(self.written))],
                                     [f["rows"] for f in self.result.files])

    def unify(self) -> None:
        """Rewrite the shards written before the ingest's schema was complete."""
        order, final = list(self.order), self.kinds
        for index, (columns, kinds) in enumerate(self.written):
            same = columns == order and all(
                kinds[c] == final[c] or (kinds[c] == _NULL and _ARROW[final[c]] == pa.string()) for c in order)
            if not same:
                self._write(_conform(pq.read_table(self._path(index)), kinds, order, final), index)

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def discard(self) -> None:
        """Remove the shards of a failed ingest."""
        self.pool.shutdown(wait=True)
        for index in range(len(self.written)):
            self._path(index).unlink(missing_ok=True)
