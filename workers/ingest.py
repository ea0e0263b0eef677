"""``curate ingest``: files → Parquet shards with ``id`` and ``text``.

Formats: JSONL / JSON lines (optionally .gz), Parquet (any text/id column names),
WARC (HTML responses, text extracted with resiliparse) and WET, and any other file
as one plain-text document named after the file (e.g. a folder of licence texts).

Every input record becomes exactly one output row (null texts included; the job's
input check records them). Bad input stops the ingest with the file and line named,
and shards are written under temporary names, so a failed ingest leaves no shard that
looks complete.
"""

from __future__ import annotations

import glob
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from workers import atomic
from workers.shards import InputError

JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson", ".ndjson.gz")
WARC_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz")
RECORD_SUFFIXES = (".parquet", *JSON_SUFFIXES, *WARC_SUFFIXES)


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


def _json_records(path: Path) -> Iterator[tuple[str, dict]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
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
    try:
        with open(path, "rb") as f:
            for n, record in enumerate(ArchiveIterator(f, record_types=kinds)):
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
        raise InputError(f"{path}: cannot read WARC ({exc})") from None


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


def _column(values: list[Any]) -> pa.Array:
    """Scalars keep their type when the shard agrees on it; anything else becomes JSON text."""
    kinds = {type(v) for v in values if v is not None}
    if kinds <= {str}:
        return pa.array(values, pa.string())
    if kinds == {bool}:
        return pa.array(values, pa.bool_())
    if kinds == {int}:
        try:
            return pa.array(values, pa.int64())
        except OverflowError:
            pass
    if kinds <= {int, float} and bool not in kinds:
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    return pa.array([None if v is None else json.dumps(v, ensure_ascii=False, sort_keys=True) for v in values],
                    pa.string())


class _ShardWriter:
    def __init__(self, out: Path, prefix: str) -> None:
        self.out, self.prefix = out, prefix
        self.records: list[dict] = []
        self.text_bytes = 0
        self.result = IngestResult()

    def add(self, record: dict, text: str | None) -> None:
        self.records.append(record)
        self.text_bytes += len(text.encode("utf-8")) if text else 0

    def flush(self) -> None:
        if not self.records:
            return
        names = list(dict.fromkeys(k for r in self.records for k in r))
        table = pa.table({n: _column([r.get(n) for r in self.records]) for n in names})
        path = self.out / f"{self.prefix}-{len(self.result.files):05d}.parquet"
        atomic.write_parquet(table, path)
        self.result.files.append({"path": path.name, "rows": table.num_rows, "bytes": path.stat().st_size,
                                  "sha256": atomic.sha256_file(path)})
        self.result.rows += table.num_rows
        self.records, self.text_bytes = [], 0


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
    writer = _ShardWriter(out, prefix)
    seen: dict[str, str] = {}
    max_bytes = int(shard_mb * 2**20) if shard_mb else None
    for path in files:
        stem = _stem(path)
        for n, (where, record) in enumerate(iter_records(path, writer.result.skipped)):
            if text_field not in record:
                raise InputError(f"{where}: no field {text_field!r} (fields: {', '.join(record) or 'none'})")
            text = record.pop(text_field)
            if text is not None and not isinstance(text, str):
                raise InputError(f"{where}: field {text_field!r} is {type(text).__name__}, expected a string")
            doc_id = record.pop(id_field, None)
            if doc_id is None:
                doc_id = f"{stem}:{n}"
                writer.result.derived_ids = True
            elif not isinstance(doc_id, str | int):
                raise InputError(f"{where}: field {id_field!r} is {type(doc_id).__name__}, expected string or int")
            doc_id = str(doc_id)
            if doc_id in seen:
                raise InputError(f"{where}: duplicate id {doc_id!r} (first seen at {seen[doc_id]})")
            seen[doc_id] = where
            writer.add({"id": doc_id, "text": text, **record}, text)
            if len(writer.records) >= shard_rows or (max_bytes and writer.text_bytes >= max_bytes):
                writer.flush()
    writer.flush()
    atomic.write_json({"inputs": [str(f) for f in files], "rows": writer.result.rows,
                       "files": writer.result.files}, out / "_ingest.json")
    return writer.result
