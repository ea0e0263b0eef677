"""Documents from JSONL(.gz) or Parquet files given by a user (a calibration set, a
family's training corpus): a bad record names the file and line, nothing is skipped
silently."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

JSONL = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")


class TextFileError(ValueError):
    pass


def read_records(path: str | Path, text_field: str = "text", where: dict | None = None) -> Iterator[dict]:
    """Records (dicts) that match every ``where`` field; each must have a string ``text_field``
    (an error names the file and line or row otherwise)."""
    where = where or {}
    for place, record in placed_records(path, (text_field, *where)):
        if not all(record.get(k) == v for k, v in where.items()):
            continue
        text = record.get(text_field)
        if not isinstance(text, str):  # missing or null is bad data, never skipped in silence
            what = "missing" if text_field not in record else f"{type(text).__name__}, not text"
            raise TextFileError(f"{place}: {text_field!r} is {what}")
        yield record


def placed_records(path: str | Path, columns: tuple[str, ...] = ()) -> Iterator[tuple[str, dict]]:
    """(where, record) of each record of a JSONL(.gz) or Parquet file; ``where`` names the
    file and line (or row). A Parquet file must have every one of ``columns``."""
    path = Path(path)
    if not path.is_file():
        raise TextFileError(f"{path} does not exist")
    if path.name.endswith(".parquet"):
        table = pq.read_table(path)
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise TextFileError(f"{path} has no column {missing[0]!r} (columns: {', '.join(table.column_names)})")
        for i, batch_row in enumerate(table.to_pylist()):
            yield f"{path} row {i}", batch_row
    elif path.name.endswith(JSONL):
        yield from _jsonl(path)
    else:
        raise TextFileError(f"{path}: unknown format (use .jsonl, .jsonl.gz, .json.gz or .parquet)")


def _jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:  # decoded per line, so a bad byte is named by line, not raised bare
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TextFileError(f"{path}:{line_no}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset "
                                    f"{exc.start})") from None
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TextFileError(f"{path}:{line_no}: not JSON ({exc})") from None
            if not isinstance(record, dict):
                raise TextFileError(f"{path}:{line_no}: a JSON object per line is expected")
            yield f"{path}:{line_no}", record


def read_texts(path: str | Path, text_field: str = "text", where: dict | None = None) -> list[str]:
    """The non-empty texts of ``path`` (an error if there are none)."""
    texts = [r[text_field] for r in read_records(path, text_field, where) if (r.get(text_field) or "").strip()]
    if not texts:
        raise TextFileError(f"{path} holds no text in field {text_field!r}" + (f" where {where}" if where else ""))
    return texts
