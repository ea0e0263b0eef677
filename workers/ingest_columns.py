"""The Arrow column path of ``curate ingest`` (see ``workers.ingest``).

What a field's values are and one kind per field for the whole ingest (``_unify``,
``_column``, ``_convert``, ``_conform``), the ``_Piece`` of output columns that the
ingest hands to the shards, and the Arrow side of reading: JSON lines a chunk at a time
(``_json_chunks``), read and parsed ahead on threads (``_read_ahead``, ``_JsonChunk``),
and the checks that say whether Arrow's reading is what the per-record readers would
give (``_line_spans``, ``_lossless``, ``_parquet_kind``). Kept apart from the per-record
readers and the orchestration in ``workers.ingest`` so each file stays short; this module
imports neither of the other ingest modules.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

# --- Column kinds: what a field's values are, and one kind per field for the whole ingest ---

# A field's values are all null, bool, int, float (ints and floats mixed too) or str, or else
# "json": nested or mixed, written as JSON text. Kinds only move up: null < everything,
# int < float, and any other pair → json.
_NULL, _BOOL, _INT, _FLOAT, _STR, _JSON = "null", "bool", "int", "float", "str", "json"
_ARROW = {_NULL: pa.string(), _BOOL: pa.bool_(), _INT: pa.int64(), _FLOAT: pa.float64(), _STR: pa.string(),
          _JSON: pa.string()}


def _unify(a: str, b: str) -> str:
    if a == b or b == _NULL:
        return a
    if a == _NULL:
        return b
    return _FLOAT if {a, b} == {_INT, _FLOAT} else _JSON


def _json_text(values: list[Any]) -> pa.Array:
    return pa.array([None if v is None else json.dumps(v, ensure_ascii=False, sort_keys=True) for v in values],
                    pa.string())


def _column(values: list[Any]) -> tuple[pa.Array, str]:
    """Scalars keep their type when the values agree on it; anything else becomes JSON text."""
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return pa.array(values, pa.string()), _NULL
    if kinds == {str}:
        return pa.array(values, pa.string()), _STR
    if kinds == {bool}:
        return pa.array(values, pa.bool_()), _BOOL
    if kinds == {int}:
        try:
            return pa.array(values, pa.int64()), _INT
        except OverflowError:
            pass
    if kinds <= {int, float} and bool not in kinds:
        return pa.array([None if v is None else float(v) for v in values], pa.float64()), _FLOAT
    return _json_text(values), _JSON


def _chunked(values: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    return values if isinstance(values, pa.ChunkedArray) else pa.chunked_array([values])


def _convert(values: pa.ChunkedArray, kind: str, to: str) -> pa.ChunkedArray:
    """Values of ``kind`` as the wider kind ``to``."""
    if kind == _NULL:
        return pa.chunked_array([pa.nulls(len(values), _ARROW[to])])
    if kind == to:
        return values if values.type == _ARROW[to] else values.cast(_ARROW[to])
    if to == _FLOAT:  # from int
        return values.cast(pa.float64())
    if kind == _INT:  # to JSON text, as json.dumps spells them
        return values.cast(pa.string())
    if kind == _BOOL:
        return _chunked(pc.if_else(values, "true", "false"))
    return _chunked(_json_text(values.to_pylist()))


def _conform(table: pa.Table, kinds: dict[str, str], order: list[str], to: dict[str, str]) -> pa.Table:
    """``table`` with the columns ``order`` typed as the kinds ``to`` (absent fields all null)."""
    n = table.num_rows
    return pa.table([_convert(table[c], kinds[c], to[c]) if c in kinds
                     else pa.chunked_array([pa.nulls(n, _ARROW[to[c]])]) for c in order], names=order)


@dataclass
class _Piece:
    """Consecutive records of one input file: the output columns, the kind of each, and the ids
    as given or derived (what the duplicate check compares)."""

    table: pa.Table
    kinds: dict[str, str]
    ids: pa.ChunkedArray
    file: int  # index of the input file
    first: int  # record number (within the file) of the first row


def _records_piece(records: list[dict], doc_ids: list[str], file: int, first: int) -> _Piece:
    names = list(dict.fromkeys(k for r in records for k in r))
    columns, kinds = {}, {}
    for name in names:
        columns[name], kinds[name] = _column([r.get(name) for r in records])
    return _Piece(pa.table(columns), kinds, pa.chunked_array([pa.array(doc_ids, pa.string())]), file, first)


# --- Arrow helpers for the column path ---

_STRINGS = (pa.string(), pa.large_string(), pa.string_view())


def _read_json(buf: pa.Buffer, schema: pa.Schema | None = None) -> pa.Table | None:
    """Arrow's reading of whole JSON lines, or None where it fails. The chunk is one block: with
    several, pyarrow 26 can crash the process (SIGSEGV) when a field's type changes in a line
    that crosses a block boundary, and a line longer than a block fails ("straddling object")."""
    try:
        return pj.read_json(pa.BufferReader(buf), read_options=pj.ReadOptions(block_size=buf.size + 1),
                            parse_options=pj.ParseOptions(explicit_schema=schema))
    except (pa.ArrowException, UnicodeDecodeError):
        return None


def _lossless(values: pa.Array | pa.ChunkedArray) -> bool:
    """Whether Arrow's nested value is what ``json.loads`` gives: Arrow fills a struct key a row
    lacks with null, makes every number of a list or struct a double once one is, and reads some
    strings as timestamps; where that may have happened the lines are parsed again."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    t = arr.type
    if t in (pa.string(), pa.int64(), pa.bool_(), pa.null()):
        return True
    if t == pa.float64():  # 2.0 may have been written 2
        numbers = arr.drop_null()
        return not len(numbers) or not pc.any(pc.equal(numbers, pc.floor(numbers))).as_py()
    if pa.types.is_struct(t):
        return all(child.null_count == arr.null_count and _lossless(child) for child in arr.flatten())
    if pa.types.is_list(t):
        return _lossless(arr.flatten())
    return False


def _plain(values: pa.ChunkedArray) -> pa.ChunkedArray:
    return values.cast(values.type.value_type) if pa.types.is_dictionary(values.type) else values


def _parquet_kind(values: pa.ChunkedArray) -> tuple[pa.ChunkedArray, str] | None:
    """A Parquet column as the per-record path would convert it, or None to leave it to that path."""
    t = values.type
    if t == pa.null():
        return _convert(values, _NULL, _NULL), _NULL
    if t in _STRINGS:
        return values.cast(pa.string()), _STR
    if t == pa.bool_():
        return values, _BOOL
    if pa.types.is_integer(t):
        try:
            return values.cast(pa.int64()), _INT
        except pa.ArrowInvalid:  # a uint64 beyond int64
            return None
    if t in (pa.float32(), pa.float64()):
        return values.cast(pa.float64()), _FLOAT
    if pa.types.is_nested(t):
        return _chunked(_json_text(values.to_pylist())), _JSON
    return None


def _line_spans(data: np.ndarray, newlines: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Start and end of the non-empty lines (a trailing CR dropped), or None unless every one
    starts with ``{`` and ends with ``}``. Then, since a break inside an object can never come
    between ``}`` and ``{`` (and a string cannot hold a raw newline), no object spans lines,
    and when Arrow finds as many objects as there are lines, each line holds exactly one:
    what the per-line reader requires."""
    starts = np.concatenate(([0], newlines + 1))
    ends = np.concatenate((newlines, [len(data)]))
    if starts[-1] == len(data):  # nothing after the last newline
        starts, ends = starts[:-1], ends[:-1]
    nonempty = ends > starts
    ends = ends - (nonempty & (data[np.maximum(ends - 1, 0)] == 13))
    nonempty = ends > starts
    starts, ends = starts[nonempty], ends[nonempty]
    if len(starts) and not ((data[starts] == 0x7B).all() and (data[ends - 1] == 0x7D).all()):
        return None
    return starts, ends



class _JsonChunk:
    """Whole lines of a JSON lines file (``data[:end]``, not sliced to spare a copy), where its
    lines are, and Arrow's reading of them (None where Arrow fails or the lines are not each
    one object). Made on the read-ahead thread: Arrow parses one chunk while the last is used."""

    def __init__(self, chunk: tuple[bytes, int]) -> None:
        self.data, self.end = chunk
        self.buffer = pa.py_buffer(self.data).slice(0, self.end)
        array = np.frombuffer(self.buffer, dtype=np.uint8)
        newlines = np.flatnonzero(array == 10)
        self.newlines = len(newlines)
        self.spans = _line_spans(array, newlines)
        self.table = _read_json(self.buffer) if self.spans is not None and len(self.spans[0]) else None


def _json_chunks(path: Path, chunk_bytes: int) -> Iterator[tuple[bytes, int]]:
    """The file's bytes (decompressed) in chunks of whole lines, about ``chunk_bytes`` each:
    (bytes, end), the chunk being ``bytes[:end]`` (not sliced, to spare a copy)."""
    compression = "gzip" if path.name.endswith(".gz") else None
    with pa.input_stream(str(path), compression=compression) as f:
        rest = b""
        while True:
            block = f.read(chunk_bytes)
            if not block:
                if rest:
                    yield rest, len(rest)
                return
            data = rest + block if rest else block
            end = data.rfind(b"\n") + 1
            if end:
                yield data, end
            rest = data[end:]


def _read_ahead(items: Iterator) -> Iterator:
    """``items``, each next one produced on a thread while this one is used (the next chunk
    is read and decompressed while Arrow parses this one); errors come out in order."""
    with ThreadPoolExecutor(1, thread_name_prefix="ingest-read") as pool:
        ahead = pool.submit(next, items, None)
        while (item := ahead.result()) is not None:
            ahead = pool.submit(next, items, None)
            yield item
