"""Evaluation sets a job decontaminates against: named local files, one item per record.

JSONL(.gz) and Parquet records give an item's text as the named ``fields`` joined by a
newline (a question and its answer, say); a plain-text file (``.txt``) gives one item per
non-empty line. A record without one of the fields, or with a non-text value there, is an
error that names the file, line (or row) and field: an item is never skipped in silence.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pydantic import Field, field_validator

from filters.base import InputPath, StageParams
from filters.text_files import TextFileError, placed_records

PLAIN_TEXT = (".txt",)


class EvalSet(StageParams):
    name: str = Field(pattern=r"^[\w.-]{1,64}$", description="how reports and lineage name this set")
    path: InputPath = Field(description="JSONL(.gz), Parquet, or .txt with one item per line")
    fields: tuple[str, ...] = Field(("text",), min_length=1,
                                    description="record fields whose texts, joined by a newline, make an item")
    id_field: str | None = Field(None, description="record field naming the item (default: its number from 0)")

    @field_validator("fields")
    @classmethod
    def _distinct(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError("fields are listed twice")
        return v


def read_items(eval_set: EvalSet) -> Iterator[tuple[str, str]]:
    """(item id, item text) of every record, in file order."""
    path = Path(eval_set.path)
    if path.name.endswith(PLAIN_TEXT):
        if eval_set.fields != ("text",) or eval_set.id_field is not None:
            raise TextFileError(f"{path}: a .txt eval set has one item per line; it takes no fields or id_field")
        if not path.is_file():
            raise TextFileError(f"{path} does not exist")
        with open(path, encoding="utf-8", errors="strict") as f:
            number = 0
            try:
                for line in f:
                    if line.strip():
                        yield str(number), line.rstrip("\n")
                        number += 1
            except UnicodeDecodeError as exc:
                raise TextFileError(f"{path}: not valid UTF-8 after item {number} ({exc.reason})") from None
        return
    columns = (*eval_set.fields, *((eval_set.id_field,) if eval_set.id_field else ()))
    for number, (place, record) in enumerate(placed_records(path, columns)):
        parts = []
        for name in eval_set.fields:
            value = record.get(name)
            if not isinstance(value, str):
                what = "missing" if name not in record else f"{type(value).__name__}, not text"
                raise TextFileError(f"{place}: eval set {eval_set.name!r} field {name!r} is {what}")
            parts.append(value)
        item = str(number)
        if eval_set.id_field:
            value = record.get(eval_set.id_field)
            if value is None or isinstance(value, dict | list):
                raise TextFileError(f"{place}: eval set {eval_set.name!r} id_field {eval_set.id_field!r} is "
                                    f"{'missing' if value is None else type(value).__name__}")
            item = str(value)
        yield item, "\n".join(parts)
