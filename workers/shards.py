"""Input shards: discovery, the pre-flight check run before any work starts, work units
(row ranges of a shard), and the normalised view (``id``, ``text``, ``row``) stages see."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import PurePosixPath

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from filters.base import ID, TEXT
from workers.spec import JobSpec

ROW = "row"
_TEXT_TYPES = (pa.string(), pa.large_string(), pa.binary(), pa.large_binary(), pa.null())


class InputError(ValueError):
    """Bad input data; the message names the file, and the row or column where known
    (also carried as data: ``path`` and ``row``)."""

    code = "bad_input"

    def __init__(self, message: str, *, path: str | None = None, row: int | None = None) -> None:
        super().__init__(message)
        self.path, self.row = path, row


@dataclass(frozen=True)
class Shard:
    index: int
    path: str
    rows: int
    has_id: bool

    @property
    def key(self) -> str:
        """Stable name for everything derived from this shard (scores, decisions, output)."""
        stem = PurePosixPath(self.path).name.removesuffix(".parquet")
        return f"{self.index:05d}-{stem}"

    @property
    def stem(self) -> str:
        return PurePosixPath(self.path).name.removesuffix(".parquet")


def discover(patterns: list[str]) -> list[str]:
    """Expand paths and globs (fsspec URLs allowed) into a sorted, de-duplicated list."""
    found: list[str] = []
    for i, pattern in enumerate(patterns):
        fs, root = fsspec.core.url_to_fs(pattern)
        if fs.isdir(root):
            root = root.rstrip("/") + "/*.parquet"
        matches = sorted(fs.glob(root))
        if not matches:
            raise InputError(f"inputs[{i}]: {pattern!r} matches no file")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        for m in matches:
            url = m if protocol in ("file", "local") else f"{protocol}://{m}"
            if url not in found:
                found.append(url)
    return found


def _open(path: str) -> pq.ParquetFile:
    if "://" not in path:
        return pq.ParquetFile(path)
    fs, p = fsspec.core.url_to_fs(path)
    return pq.ParquetFile(fs.open(p, "rb"))


def open_parquet(path: str) -> pq.ParquetFile:
    try:
        return _open(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None


def derived_ids(stem: str, n: int) -> pa.Array:
    return pa.array([f"{stem}:{i}" for i in range(n)], pa.string())


def _read_ids(shard_path: str, pf: pq.ParquetFile, id_col: str) -> pa.Array:
    try:
        ids = pf.read(columns=[id_col])[id_col].combine_chunks()
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{shard_path}: cannot read id column {id_col!r} ({exc})") from None
    nulls = pc.is_null(ids)
    if pc.any(nulls).as_py():
        row = pc.index(nulls, True).as_py()
        raise InputError(f"{shard_path} row {row}: id column {id_col!r} is null", path=shard_path, row=row)
    if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type) or pa.types.is_integer(ids.type)):
        raise InputError(f"{shard_path}: id column {id_col!r} has type {ids.type}; expected string or integer")
    return pc.cast(ids, pa.string())


def preflight(spec: JobSpec) -> list[Shard]:
    """Check every input before the job starts: readable, right columns, unique ids."""
    text_col, id_col = spec.columns.text, spec.columns.id
    shards: list[Shard] = []
    id_tables: list[pa.Table] = []
    first_seen: dict[str, tuple[str, pa.DataType]] = {}  # column -> (shard, type) where first met
    for index, path in enumerate(discover(spec.inputs)):
        pf = open_parquet(path)
        schema = pf.schema_arrow
        _check_same_types(path, schema, first_seen)
        if text_col not in schema.names:
            raise InputError(
                f"{path}: text column {text_col!r} not found (columns: {', '.join(schema.names)}); "
                "set columns.text in the spec"
            )
        text_type = schema.field(text_col).type
        if text_type not in _TEXT_TYPES:
            raise InputError(f"{path}: text column {text_col!r} has type {text_type}; expected string")
        rows = pf.metadata.num_rows
        if rows == 0 and not spec.execution.allow_empty_shards:
            raise InputError(
                f"{path}: shard has 0 rows; remove it or set execution.allow_empty_shards: true"
            )
        has_id = id_col in schema.names
        shard = Shard(index=index, path=path, rows=rows, has_id=has_id)
        ids = _read_ids(path, pf, id_col) if has_id else derived_ids(shard.stem, rows)
        id_tables.append(pa.table({ID: ids, "shard": pa.repeat(index, rows) if rows else pa.array([], pa.int64()),
                                   ROW: pa.array(range(rows), pa.int64())}))
        shards.append(shard)
    _check_unique_ids(pa.concat_tables(id_tables) if id_tables else None, shards)
    return shards


def _type_family(t: pa.DataType) -> str | None:
    """Types a column may take in different shards of one job (their outputs are read as
    one dataset): string or large_string, any integer, any float; None for an all-null
    column, which fits any."""
    if pa.types.is_null(t):
        return None
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t):
        return "float"
    return str(t)


def _check_same_types(path: str, schema: pa.Schema, first_seen: dict[str, tuple[str, pa.DataType]]) -> None:
    for field in schema:
        family = _type_family(field.type)
        if family is None:
            continue
        if field.name not in first_seen:
            first_seen[field.name] = (path, field.type)
            continue
        other_path, other = first_seen[field.name]
        if _type_family(other) != family:
            raise InputError(f"{path}: column {field.name!r} has type {field.type} here but {other} in {other_path}; "
                             "the shards of one job must agree on their columns' types (their outputs are read as "
                             "one dataset): fix the files, or ingest them together with `curate ingest`, which "
                             "writes shards that agree")


def _check_unique_ids(ids: pa.Table | None, shards: list[Shard]) -> None:
    if ids is None or ids.num_rows == 0:
        return
    counts = ids.group_by(ID).aggregate([(ID, "count")])
    dupes = counts.filter(pc.greater(counts[f"{ID}_count"], 1))
    if dupes.num_rows == 0:
        return
    first = dupes[ID][0].as_py()
    where = ids.filter(pc.equal(ids[ID], first))
    places = [
        f"{shards[s].path} row {r}" for s, r in zip(where["shard"].to_pylist(), where[ROW].to_pylist(), strict=True)
    ]
    raise InputError(
        f"duplicate document id {first!r} ({dupes.num_rows} duplicated ids in all): found in "
        + " and ".join(places[:3])
    )


def _validated_text(path: str, column: pa.ChunkedArray, first_row: int = 0) -> pa.Array:
    """Return the text column as Arrow strings, failing on the first invalid UTF-8 row
    (numbered in the shard: ``first_row`` is the row the column starts at)."""
    arr = column.combine_chunks()
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), pa.string())
    as_text = arr.view(pa.string() if arr.type in (pa.string(), pa.binary()) else pa.large_string())
    try:
        as_text.validate(full=True)
    except pa.ArrowInvalid:
        for row, value in enumerate(arr.cast(pa.large_binary()).to_pylist()):
            if value is None:
                continue
            try:
                value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"{path} row {first_row + row}: text is not valid UTF-8 "
                    f"(byte 0x{value[exc.start]:02x} at offset {exc.start})", path=path, row=first_row + row,
                ) from None
        raise
    return pc.cast(as_text, pa.string())


def read_shard(shard: Shard, id_column: str) -> pa.Table:
    """The shard as stored, with the id column added when ids are derived."""
    try:
        table = open_parquet(shard.path).read()
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{shard.path}: cannot read Parquet data ({exc})", path=shard.path) from None
    if not shard.has_id:
        table = table.append_column(id_column, derived_ids(shard.stem, table.num_rows))
    return table


@dataclass(frozen=True)
class Unit:
    """A unit of work: rows [start, stop) of one input shard. Units of a shard are
    contiguous and in order, so the units' documents in unit order are the input order."""

    index: int  # position among all the job's units, in input order
    shard: Shard
    start: int
    stop: int

    @property
    def key(self) -> str:
        """Stable name for everything derived from this unit (scores, decisions, versions)."""
        return f"{self.shard.key}.{self.start:09d}"

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def record(self) -> dict:
        return {"index": self.index, "shard": self.shard.index, "start": self.start, "stop": self.stop,
                "key": self.key}


# A unit is at least this many rows (smaller ones cost more in scheduling than they save)
# and at most this many (bounded memory per task), unless the spec sets unit_rows.
MIN_UNIT_ROWS, MAX_UNIT_ROWS = 256, 50_000


def plan_units(shards: list[Shard], unit_rows: int | None, parallelism: int) -> list[Unit]:
    """Split shards into row ranges so every worker has work even when the input is one
    large file. By default a unit is about 1/(2 × parallelism) of the input (within
    [MIN_UNIT_ROWS, MAX_UNIT_ROWS]); a shard is split into equal-sized units."""
    if unit_rows is None:
        total = sum(s.rows for s in shards)
        unit_rows = min(MAX_UNIT_ROWS, max(MIN_UNIT_ROWS, math.ceil(total / max(1, 2 * parallelism))))
    units: list[Unit] = []
    for shard in shards:
        n = max(1, math.ceil(shard.rows / unit_rows))
        bounds = [shard.rows * k // n for k in range(n + 1)]
        for start, stop in zip(bounds, bounds[1:], strict=False):
            units.append(Unit(len(units), shard, start, stop))
    return units


def units_from_record(shards: list[Shard], records: list[dict]) -> list[Unit]:
    return [Unit(r["index"], shards[r["shard"]], r["start"], r["stop"]) for r in records]


def read_unit_docs(unit: Unit, text_column: str, id_column: str) -> pa.Table:
    """The docs view of one unit: ``id``, ``text`` (validated UTF-8) and ``row`` (the row in
    the shard), read from the row groups that cover the unit's rows."""
    pf = open_parquet(unit.shard.path)
    columns = [text_column] + ([id_column] if unit.shard.has_id else [])
    try:
        groups, first = [], 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if first < unit.stop and first + n > unit.start:
                groups.append((g, first))
            first += n
        if groups:
            table = pf.read_row_groups([g for g, _ in groups], columns=columns)
            table = table.slice(unit.start - groups[0][1], unit.rows)
        else:
            table = pf.schema_arrow.empty_table().select(columns)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{unit.shard.path}: cannot read Parquet data ({exc})", path=unit.shard.path) from None
    return docs_view(unit, table, text_column, id_column)


def docs_view(unit: Unit, table: pa.Table, text_column: str, id_column: str) -> pa.Table:
    """``id``, ``text`` (validated UTF-8) and ``row`` of the unit's rows, from a table
    holding exactly those rows (ids derived from the shard name and row when absent)."""
    rows = pa.array(range(unit.start, unit.stop), pa.int64())
    if unit.shard.has_id:
        ids = pc.cast(table[id_column], pa.string())
    else:
        ids = pa.array([f"{unit.shard.stem}:{r}" for r in range(unit.start, unit.stop)], pa.string())
    return pa.table({ID: ids, TEXT: _validated_text(unit.shard.path, table[text_column], unit.start), ROW: rows})
