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


class WriteFailed(OSError):
    """A file of the job could not be written (disk full, read-only, quota); the message
    names it, which pyarrow's own errors do not."""

    code = "write_failed"  # the job error code it is recorded under (workers.job_folder.ERROR_CODES)


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise WriteFailed(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet(table: pa.Table, path: Path) -> None:
    # Fixed writer options so identical tables give byte-identical files (resume checks sha256).
    _atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd", row_group_size=64_000))


def write_parquet_groups(groups: list[pa.Table], schema: pa.Schema, path: Path) -> None:
    """One row group per table of ``groups`` (a reader filtering on a column the groups
    split by skips the others by their statistics)."""
    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for group in groups:
                writer.write_table(group, row_group_size=max(group.num_rows, 1))
    _atomic(path, write)


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
