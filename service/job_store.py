"""The service's side of the catalog: one thread owns the DuckDB connection and runs
every catalog call (DuckDB allows one writing process; this keeps it to one thread),
and the job records the service submitted are mirrored in memory, so status reads need
neither that thread nor a query. The catalog's ``jobs`` table stays the record."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from service.catalog import Catalog, open_or_rebuild

T = TypeVar("T")


class Database:
    """The single DuckDB writer: one thread owns the catalog and runs every call on it."""

    def __init__(self, path: Path, job_roots: list[Path] | None = None) -> None:
        """``job_roots``: where job folders live, to rebuild a catalog that is missing or
        damaged (``rebuilt`` then says what was done)."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duckdb")
        self.catalog: Catalog
        self.catalog, self.rebuilt = self._executor.submit(open_or_rebuild, path, job_roots or []).result()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(catalog, *args)`` on the catalog's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(fn, self.catalog, *args))

    def close(self) -> None:
        self._executor.submit(self.catalog.close).result()
        self._executor.shutdown()


class JobStore:
    """Job records the service submitted: read from memory, written through to the catalog."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._rows: dict[str, dict] = {}

    async def load(self) -> None:
        for row in await self.db.run(Catalog.submissions):
            self._rows[row["job_id"]] = row

    def get(self, job_id: str) -> dict | None:
        row = self._rows.get(job_id)
        return dict(row) if row else None

    def all(self) -> list[dict]:
        return sorted((dict(r) for r in self._rows.values()), key=lambda r: (r["created_at"], r["job_id"]))

    def by_idempotency_key(self, key: str) -> dict | None:
        return next((dict(r) for r in self._rows.values() if r["idempotency_key"] == key), None)

    async def save(self, row: dict) -> None:
        await self.db.run(Catalog.save_submission, row)
        self._rows[row["job_id"]] = dict(row)

    async def register_folder(self, row: dict) -> None:
        """Copy the job folder's facts (stages, shards, stats) next to the record."""
        await self.db.run(lambda c: c.register_job(row["output"], state=row["state"], error=row["error"],
                                                   error_code=row.get("error_code")))
