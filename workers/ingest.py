"""``curate ingest``: files → Parquet shards with ``id`` and ``text``.

Formats: JSONL / JSON lines (optionally .gz), Parquet (any text/id column names),
WARC (HTML responses, text extracted with resiliparse) and WET, and any other file
as one plain-text document named after the file (e.g. a folder of licence texts).

Every input record becomes exactly one output row (null texts included; the job's
input check records them). Bad input stops the ingest with the file and line named,
and shards are written under temporary names, so a failed ingest leaves no shard that
looks complete (a failed ingest removes the shards it had already written).

JSONL is parsed by Arrow's JSON reader a chunk (``CHUNK_BYTES`` of decompressed text)
at a time and Parquet a record batch at a time; ids, texts and other fields are checked
and converted as columns. Python's per-line reader is kept to name ``file:line``: when
Arrow rejects a chunk (invalid JSON or UTF-8, a line that is not an object, a field
whose type changes...) or the chunk holds something the column checks cannot vouch for
(a line that is not exactly one object, a null text that may be a missing field, an
``id``/``text`` field that a renamed one would overwrite), that chunk goes through the
per-line code, which raises the error it always raised or, when the chunk is fine
after all (a field of mixed types), converts it record by record.

Reading (and gunzipping), Arrow's parsing and writing shards run on threads of their
own, so each overlaps the others (all release the GIL).

This module holds the entry point (``ingest``), the per-record readers (the reference
reading of every format, the one that names ``file:line``) and ``_Ingest``, which runs
each file through the column path or the per-record path. The Arrow column path is in
``workers.ingest_columns``; cutting, writing and unifying shards and the duplicate-id
check are in ``workers.ingest_shards`` (neither imports this module). The constants
stay here, read when an ingest runs, so that tests can patch them on this module.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workers import atomic
from workers.ingest_columns import (
    _BOOL,
    _FLOAT,
    _INT,
    _JSON,
    _NULL,
    _STR,
    _STRINGS,
    _chunked,
    _convert,
    _json_chunks,
    _json_text,
    _JsonChunk,
    _lossless,
    _parquet_kind,
    _Piece,
    _plain,
    _read_ahead,
    _read_json,
    _records_piece,
)
from workers.ingest_shards import _Ids, _Shards
from workers.shards import InputError

JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson", ".ndjson.gz")
WARC_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz")
RECORD_SUFFIXES = (".parquet", *JSON_SUFFIXES, *WARC_SUFFIXES)

CHUNK_BYTES = 8 << 20  # decompressed JSONL handed to Arrow at a time (whole lines)
PARQUET_BATCH_ROWS = 65_536
PY_BATCH_ROWS = 4_096  # records the per-line path converts at a time
# Ids held (as Arrow strings) for the duplicate check: checking them takes about 7x this (Arrow's
# hash set). An ingest with more ids has DuckDB check the written shards, within DUCKDB_MEMORY_LIMIT
# (it spills to disk past it).
ID_MEMORY_BYTES = 16 << 20
DUCKDB_MEMORY_LIMIT = "256MB"


@dataclass
class IngestResult:
    files: list[dict] = field(default_factory=list)
    rows: int = 0
    derived_ids: bool = False
    # WARC records that carry no text (images, redirects...): counted by content type.
    skipped: dict[str, int] = field(default_factory=dict)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in RECORD_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


# --- Per-record readers: WARC, plain text, and the per-line JSON path that names file:line ---

def _json_lines(f: Iterable[bytes], path: Path, line_offset: int = 0) -> Iterator[tuple[str, dict]]:
    for line_no, raw in enumerate(f, line_offset + 1):
        if not raw.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"{where}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
            ) from None
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(record, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
        yield where, record


def _json_records(path: Path) -> Iterator[tuple[str, dict]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            yield from _json_lines(f, path)
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None


def _parquet_records(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        pf = pq.ParquetFile(path)
        row = 0
        for batch in pf.iter_batches(batch_size=2048):
            for record in batch.to_pylist():
                yield f"{path} row {row}", record
                row += 1
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None


def _warc_records(path: Path, skipped: dict[str, int]) -> Iterator[tuple[str, dict]]:
    """WET conversion records as they are; HTML responses through resiliparse's extractor."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    kinds = WarcRecordType.response | WarcRecordType.conversion
    read, at = 0, 0  # records read, and where the last one began (for the error)
    try:
        with open(path, "rb") as f:
            for n, record in enumerate(ArchiveIterator(f, record_types=kinds)):
                read, at = n + 1, record.stream_pos
                body = record.reader.read()
                if record.record_type == WarcRecordType.response:
                    ctype = (record.http_headers.get("Content-Type") or "unknown") if record.http_headers else "unknown"
                    if "html" not in ctype.lower():
                        kind = ctype.split(";")[0].strip()
                        skipped[kind] = skipped.get(kind, 0) + 1
                        continue
                    text = extract_plain_text(bytes_to_str(body, detect_encoding(body)), main_content=True)
                else:
                    text = body.decode("utf-8", errors="replace")
                headers = record.headers
                yield f"{path} record {n}", {
                    "id": (headers.get("WARC-Record-ID") or f"{_stem(path)}:{n}").strip("<>").removeprefix("urn:uuid:"),
                    "text": text,
                    "url": (headers.get("WARC-Target-URI") or "").strip("<>") or None,
                    "date": headers.get("WARC-Date"),
                }
    except OSError as exc:
        where = f"after {read} records (the last began at byte {at:,})" if read else "at its first record"
        raise InputError(f"{path}: cannot read WARC {where}: {exc}; nothing was ingested: repair the file "
                         "(e.g. drop the damaged gzip member) or leave it out") from None


def _text_file_record(path: Path) -> Iterator[tuple[str, dict]]:
    """Any other file is one plain-text document whose id is the file name."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: not a known data format and not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        ) from None
    yield str(path), {"id": path.name, "text": text}


def iter_records(path: Path, skipped: dict[str, int]) -> Iterator[tuple[str, dict]]:
    """Record by record, each with where it is (``file:line``, ``file row N``...): the reference
    reading of every format, also used to name the two places of a duplicate id."""
    if path.name.endswith(".parquet"):
        return _parquet_records(path)
    if path.name.endswith(JSON_SUFFIXES):
        return _json_records(path)
    if path.name.endswith(WARC_SUFFIXES):
        return _warc_records(path, skipped)
    return _text_file_record(path)


def expand_inputs(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith((".", "_")))
        else:
            found = sorted(map(Path, glob.glob(item))) if any(c in item for c in "*?[") else [p]
        if not found:
            raise InputError(f"{item}: no input files found")
        for f in found:
            if not f.exists():
                raise InputError(f"{f}: no such file")
        files.extend(found)
    return files


# --- The ingest ---

class _Ingest:
    def __init__(self, files: list[Path], shards: _Shards, text_field: str, id_field: str) -> None:
        self.files, self.shards, self.text_field, self.id_field = files, shards, text_field, id_field
        self.result = shards.result

    def run(self) -> None:
        for index, path in enumerate(self.files):
            stem = _stem(path)
            if path.name.endswith(".parquet"):
                pieces = self._parquet(path, index, stem)
            elif path.name.endswith(JSON_SUFFIXES):
                pieces = self._json(path, index, stem)
            else:
                pieces = self._records(iter_records(path, self.result.skipped), index, stem, 0)
            for piece in pieces:
                self.shards.add(piece)
        self.shards.flush()
        self.shards.wait()
        repeat = self.shards.first_repeat()
        if repeat:
            doc_id, row, first = repeat
            raise InputError(f"{self._where(row)}: duplicate id {doc_id!r} (first seen at {self._where(first)})")
        self.shards.unify()

    def _where(self, row: int) -> str:
        """Where an ingest row came from, as the per-record readers name it (a second pass over
        that one file, up to that record: only done to report a duplicate)."""
        file, number = self.shards.source(row)
        for n, (where, _) in enumerate(iter_records(self.files[file], {})):
            if n == number:
                return where
        return str(self.files[file])

    # The per-record path: checks each record, as ingest always did.
    def _records(self, records: Iterable[tuple[str, dict]], file: int, stem: str, first: int) -> Iterator[_Piece]:
        text_field, id_field = self.text_field, self.id_field
        batch: list[dict] = []
        doc_ids: list[str] = []
        start = first
        for n, (where, record) in enumerate(records, first):
            if text_field not in record:
                raise InputError(f"{where}: no field {text_field!r} (fields: {', '.join(record) or 'none'})")
            text = record.pop(text_field)
            if text is not None and not isinstance(text, str):
                raise InputError(f"{where}: field {text_field!r} is {type(text).__name__}, expected a string")
            doc_id = record.pop(id_field, None)
            if doc_id is None:
                doc_id = f"{stem}:{n}"
                self.result.derived_ids = True
            elif not isinstance(doc_id, str | int):
                raise InputError(f"{where}: field {id_field!r} is {type(doc_id).__name__}, expected string or int")
            doc_id = str(doc_id)
            batch.append({"id": doc_id, "text": text, **record})
            doc_ids.append(doc_id)
            if len(batch) >= PY_BATCH_ROWS:
                yield _records_piece(batch, doc_ids, file, start)
                batch, doc_ids, start = [], [], n + 1
        if batch:
            yield _records_piece(batch, doc_ids, file, start)

    def _ids(self, values: pa.ChunkedArray | None, stem: str, first: int, rows: int) -> pa.ChunkedArray:
        """Ids as strings; a record without one gets ``<file stem>:<record number>``."""
        if values is not None and not values.null_count:
            return values
        numbers = pa.array(np.arange(first, first + rows, dtype=np.int64)).cast(pa.string())
        derived = _chunked(pc.binary_join_element_wise(f"{stem}:", numbers, ""))
        self.result.derived_ids = True
        return derived if values is None else _chunked(pc.if_else(values.is_null(), derived, values))

    def _columns(self, table: pa.Table, text: pa.ChunkedArray, ids: pa.ChunkedArray,
                 kind_of) -> tuple[dict[str, pa.ChunkedArray], dict[str, str]] | None:
        """``id``, ``text`` and every other field converted by ``kind_of`` (None: leave the
        records to the per-record path)."""
        columns = {"id": ids, "text": text.cast(pa.string())}
        kinds = {"id": _STR, "text": _NULL if text.null_count == len(text) else _STR}
        for name in table.column_names:
            if name in (self.text_field, self.id_field):
                continue
            if name in ("id", "text"):  # a renamed id/text field: the record's own field wins, as before
                return None
            converted = kind_of(name, table[name])
            if converted is None:
                return None
            columns[name], kinds[name] = converted
        return columns, kinds

    # JSON lines: Arrow a chunk at a time, the per-line path for a chunk it cannot vouch for.
    def _json(self, path: Path, file: int, stem: str) -> Iterator[_Piece]:
        line0 = record0 = 0
        # Three stages on three threads: read (and decompress), parse, check and convert.
        chunks = _read_ahead(map(_JsonChunk, _read_ahead(_json_chunks(path, CHUNK_BYTES))))
        while True:
            try:
                chunk = next(chunks, None)
            except (OSError, pa.ArrowException) as exc:
                raise _read_error(path, exc) from None
            if chunk is None:
                return
            try:
                piece = self._json_piece(chunk, file, stem, record0)
            except (pa.ArrowException, UnicodeDecodeError, json.JSONDecodeError):  # e.g. bad UTF-8 in a key
                piece = None
            if piece is not None:
                pieces: Iterable[_Piece] = [piece]
            else:
                lines = io.BytesIO(chunk.data[:chunk.end])
                pieces = self._records(_json_lines(lines, path, line0), file, stem, record0)
            for p in pieces:
                record0 += p.table.num_rows
                yield p
            line0 += chunk.newlines

    def _json_piece(self, chunk: _JsonChunk, file: int, stem: str, first: int) -> _Piece | None:
        """Arrow's reading of the chunk's lines if it is what the per-line reader would give."""
        if chunk.spans is None:
            return None
        data, (starts, ends) = chunk.data, chunk.spans
        if not len(starts):
            return _Piece(pa.table({}), {}, pa.chunked_array([], pa.string()), file, first)
        table = chunk.table
        if table is None or table.num_rows != len(starts):
            return None
        names = table.column_names
        dated = [f.name for f in table.schema if pa.types.is_timestamp(f.type)]
        if dated:  # Arrow reads ISO dates as timestamps: read those fields again as the strings they are
            table = _read_json(chunk.buffer, pa.schema([(n, pa.string()) for n in dated]))
            if table is None:
                return None
            table = table.select(names)
        table.validate(full=True)  # invalid UTF-8 in a string value (Arrow does not check)
        if self.text_field not in names:
            return None
        text = table[self.text_field]
        if text.type not in (pa.string(), pa.null()):
            return None
        if text.null_count:  # null, or no text field at all?
            for i in np.flatnonzero(text.is_null().to_numpy()):
                if self.text_field not in json.loads(data[starts[i]:ends[i]]):
                    return None
        ids = table[self.id_field] if self.id_field in names else None
        if ids is not None:
            if ids.type == pa.int64():
                ids = ids.cast(pa.string())
            elif ids.type == pa.null():
                ids = None
            elif ids.type != pa.string():
                return None
        ids = self._ids(ids, stem, first, table.num_rows)
        again: list[str] = []

        def kind_of(name: str, values: pa.ChunkedArray) -> tuple[pa.ChunkedArray, str] | None:
            t = values.type
            if t == pa.null():
                return _convert(values, _NULL, _NULL), _NULL
            simple = {pa.bool_(): _BOOL, pa.int64(): _INT, pa.float64(): _FLOAT, pa.string(): _STR}
            if t in simple:
                return values, simple[t]
            if pa.types.is_struct(t) or pa.types.is_list(t):
                if _lossless(values):
                    return _chunked(_json_text(values.to_pylist())), _JSON
                again.append(name)
                return values, _JSON
            return None

        converted = self._columns(table, text, ids, kind_of)
        if converted is None:
            return None
        columns, kinds = converted
        if again:  # nested values Arrow may have reshaped: JSON text from the lines themselves
            values: dict[str, list] = {name: [] for name in again}
            for s, e in zip(starts, ends, strict=True):
                record = json.loads(data[s:e])
                for name in again:
                    values[name].append(record.get(name))
            for name in again:
                columns[name] = _chunked(_json_text(values[name]))
        return _Piece(pa.table(columns), kinds, ids, file, first)

    # Parquet: a record batch at a time, the per-record path for a batch the columns cannot serve.
    def _parquet(self, path: Path, file: int, stem: str) -> Iterator[_Piece]:
        try:
            batches = pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
        row = 0
        while True:
            try:
                batch = next(batches, None)
            except (OSError, pa.ArrowException) as exc:
                raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
            if batch is None:
                return
            piece = self._parquet_piece(pa.Table.from_batches([batch]), file, stem, row) if batch.num_rows else None
            if piece is not None:
                yield piece
            else:
                records = ((f"{path} row {row + i}", r) for i, r in enumerate(batch.to_pylist()))
                yield from self._records(records, file, stem, row)
            row += batch.num_rows

    def _parquet_piece(self, table: pa.Table, file: int, stem: str, first: int) -> _Piece | None:
        if self.text_field not in table.column_names:
            return None
        text = _plain(table[self.text_field])
        if text.type not in (*_STRINGS, pa.null()):
            return None
        ids = None
        if self.id_field in table.column_names:
            ids = _plain(table[self.id_field])
            if ids.type in _STRINGS or pa.types.is_integer(ids.type):
                ids = ids.cast(pa.string())
            elif ids.type == pa.null():
                ids = None
            else:
                return None
        ids = self._ids(ids, stem, first, table.num_rows)
        converted = self._columns(table, text, ids, lambda _, values: _parquet_kind(_plain(values)))
        if converted is None:
            return None
        columns, kinds = converted
        return _Piece(pa.table(columns), kinds, ids, file, first)


def _read_error(path: Path, exc: Exception) -> InputError:
    """A file Arrow could not read: the per-line reader names the problem as it always did."""
    try:
        for _ in _json_records(path):
            pass
    except InputError as error:
        return error
    return InputError(f"{path}: cannot read ({exc})")


def ingest(inputs: list[str], out: str | Path, *, text_field: str = "text", id_field: str = "id",
           shard_rows: int = 10_000, shard_mb: float | None = None, prefix: str = "part",
           overwrite: bool = False) -> IngestResult:
    out = Path(out)
    files = expand_inputs(inputs)
    existing = sorted(out.glob(f"{prefix}-*.parquet")) if out.exists() else []
    if existing and not overwrite:
        raise InputError(f"{out} already holds {len(existing)} shards; use --overwrite or another folder")
    for p in existing:
        p.unlink()
    max_bytes = int(shard_mb * 2**20) if shard_mb else None
    shards = _Shards(out, prefix, shard_rows, max_bytes, IngestResult(), _Ids(ID_MEMORY_BYTES, DUCKDB_MEMORY_LIMIT))
    try:
        _Ingest(files, shards, text_field, id_field).run()
    except BaseException:
        shards.discard()
        raise
    shards.close()
    result = shards.result
    atomic.write_json({"inputs": [str(f) for f in files], "rows": result.rows, "files": result.files},
                      out / "_ingest.json")
    return result
