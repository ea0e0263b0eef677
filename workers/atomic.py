"""Writes that are all-or-nothing: a temporary name in the same folder, then rename."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from filters.lm.models import file_sha256

TMP_MARK = ".tmp-"


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet(table: pa.Table, path: Path) -> None:
    # Fixed writer options so identical tables give byte-identical files (resume checks sha256).
    _atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd", row_group_size=64_000))


def write_text(text: str, path: Path) -> None:
    _atomic(path, lambda tmp: tmp.write_text(text))


def write_json(obj: Any, path: Path) -> None:
    _atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def sha256_file(path: Path) -> str:
    return file_sha256(path)  # one implementation for model files and job files


def remove_stale_temporaries(root: Path) -> int:
    """Delete temporaries left by a killed run; returns how many were removed."""
    stale = [p for p in root.rglob(f".*{TMP_MARK}*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)
