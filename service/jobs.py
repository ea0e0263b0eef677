"""The service layer: submit curation jobs to Ray, track them, answer queries.

Jobs run as Ray jobs (driver ``python -m workers.run``), so they outlive an API
restart and show up in Ray's own tooling. Job state comes from Ray; progress and
statistics from the job folder; lineage from the DuckDB catalog, which only this
process writes (through ``Database``'s single thread).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pyarrow.parquet as pq
from pydantic import ValidationError

from service.catalog import Catalog, CatalogError
from service.errors import ServiceError
from service.paths import confine_input, confine_output
from service.settings import Settings
from workers import atomic
from workers.layout import JobLayout
from workers.progress import job_progress, job_stats
from workers.reselect import ReselectError, preview_selection
from workers.spec import JobSpec

log = logging.getLogger("curate.api")
T = TypeVar("T")

API_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_jobs (
    job_id VARCHAR PRIMARY KEY, name VARCHAR, output VARCHAR, spec JSON, created_at VARCHAR,
    idempotency_key VARCHAR, state VARCHAR, error VARCHAR, attempts INTEGER, submission_id VARCHAR
);
"""
RAY_STATES = {"PENDING": "queued", "RUNNING": "running", "SUCCEEDED": "succeeded", "FAILED": "failed",
              "STOPPED": "cancelled"}
TERMINAL = {"succeeded", "failed", "cancelled"}
COLUMNS = ["job_id", "name", "output", "spec", "created_at", "idempotency_key", "state", "error", "attempts",
           "submission_id"]


class Database:
    """The single DuckDB writer: one thread owns the connection and runs every query."""

    def __init__(self, path: Path) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duckdb")
        self.catalog: Catalog = self._executor.submit(Catalog, path).result()
        self._executor.submit(self.catalog.con.execute, API_SCHEMA).result()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(fn, self.catalog, *args))

    def close(self) -> None:
        self._executor.submit(self.catalog.close).result()
        self._executor.shutdown()


def _rows(catalog: Catalog) -> list[dict]:
    sql = f"SELECT {', '.join(COLUMNS)} FROM api_jobs ORDER BY created_at, job_id"
    return [dict(zip(COLUMNS, r, strict=True)) for r in catalog.con.execute(sql).fetchall()]


def _upsert(catalog: Catalog, row: dict) -> None:
    catalog.con.execute("DELETE FROM api_jobs WHERE job_id = ?", [row["job_id"]])
    catalog.con.execute(f"INSERT INTO api_jobs VALUES ({', '.join('?' * len(COLUMNS))})",
                        [row[c] for c in COLUMNS])


def _register(catalog: Catalog, output: str, error: str | None) -> None:
    if JobLayout(output).job_file.exists():
        catalog.register_job(output, error=error)


def _why(catalog: Catalog, job_id: str, doc_id: str) -> dict:
    return catalog.why(job_id, doc_id)


def _drops(catalog: Catalog, job_id: str, stage: str | None, reason: str | None, limit: int) -> list[dict]:
    source = catalog.job_decisions(catalog.resolve_job(job_id))
    sql = ("SELECT doc_id, stage, reason, scores, cluster_id, survivor_id, shard, row "
           f"FROM {source} WHERE job_id = ? AND decision = 'drop'")
    params: list[Any] = [job_id]
    if stage:
        sql += " AND stage = ?"
        params.append(stage)
    if reason:
        sql += " AND reason = ?"
        params.append(reason)
    cur = catalog.con.execute(sql + " ORDER BY stage_index, doc_id LIMIT ?", [*params, limit])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _with_previews(rows: list[dict], text_column: str, chars: int = 300) -> list[dict]:
    """Add the first characters of each dropped document, read from its input shard."""
    by_shard: dict[str, list[dict]] = {}
    for r in rows:
        by_shard.setdefault(r["shard"], []).append(r)
    for shard, items in by_shard.items():
        try:
            texts = pq.read_table(shard, columns=[text_column])[text_column].take([r["row"] for r in items])
        except (OSError, ValueError) as exc:
            log.warning("cannot read previews from %s: %s", shard, exc)
            continue
        for r, t in zip(items, texts.to_pylist(), strict=True):
            r["text_preview"] = None if t is None else t[:chars]
    return rows


class JobService:
    def __init__(self, settings: Settings, db: Database, jobs_url: str) -> None:
        self.settings, self.db, self.jobs_url = settings, db, jobs_url
        self.live: dict[str, dict] = {}  # job_id -> {"state", "progress", "checked_at"}
        # The api_jobs rows, mirrored in memory: this process is their only writer, so
        # status reads need neither the DuckDB thread nor a query.
        self.rows: dict[str, dict] = {}
        self._client = None
        self._poller: asyncio.Task | None = None

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        from ray.job_submission import JobSubmissionClient

        self._client = await asyncio.to_thread(JobSubmissionClient, self.jobs_url)
        for row in await self.db.run(_rows):
            self.rows[row["job_id"]] = row
            self.live[row["job_id"]] = {"state": row["state"], "progress": None, "checked_at": 0.0}
        self._poller = asyncio.create_task(self._poll_forever())

    async def stop(self) -> None:
        if self._poller:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    async def ray_reachable(self) -> bool:
        try:
            await asyncio.wait_for(asyncio.to_thread(self._client.list_jobs), timeout=5)
            return True
        except Exception:  # noqa: BLE001 - readiness reports any failure as "not ready"
            return False

    # -- polling ------------------------------------------------------------------------
    async def _poll_forever(self) -> None:
        while True:
            try:
                await self.refresh_all()
            except Exception:  # noqa: BLE001 - the poller must survive a bad poll
                log.exception("job poll failed")
            await asyncio.sleep(self.settings.poll_seconds)

    async def refresh_all(self) -> None:
        active = [j for j, v in self.live.items() if v["state"] not in TERMINAL]
        await asyncio.gather(*(self.refresh(j) for j in active))

    async def refresh(self, job_id: str) -> dict:
        row = await self._get_row(job_id)
        live = self.live.setdefault(job_id, {"state": row["state"], "progress": None, "checked_at": 0.0})
        if row["state"] in TERMINAL:  # final: Ray need not remember it (e.g. after a restart)
            if live.get("progress") is None:
                live["progress"] = await asyncio.to_thread(job_progress, row["output"])
                live["checked_at"] = time.time()
            live["state"] = row["state"]
            return live
        try:
            info = await asyncio.to_thread(self._client.get_job_info, row["submission_id"])
            state = RAY_STATES.get(str(info.status).split(".")[-1], "queued")
        except RuntimeError as exc:  # the cluster no longer knows the submission
            if "not exist" not in str(exc) and "not found" not in str(exc).lower():
                raise
            info, state = None, "failed"
        live["progress"] = await asyncio.to_thread(job_progress, row["output"])
        live["checked_at"] = time.time()
        if state in TERMINAL:
            error = await self._failure_reason(row, info) if state == "failed" else None
            row.update(state=state, error=error)
            await self._save(row)
            await self.db.run(_register, row["output"], error)
        live["state"] = state
        return live

    async def _failure_reason(self, row: dict, info: Any) -> str:
        if info is None:
            return (f"Ray has no record of submission {row['submission_id']} (was the cluster restarted?); "
                    f"POST /jobs/{row['job_id']}/retry resumes the job from its completion markers")
        try:
            logs = await asyncio.to_thread(self._client.get_job_logs, row["submission_id"])
        except Exception:  # noqa: BLE001 - fall back to Ray's own message
            logs = ""
        errors = [line.removeprefix("error: ") for line in logs.splitlines() if line.startswith("error: ")]
        return errors[-1] if errors else (info.message or "job failed")

    # -- commands -----------------------------------------------------------------------
    def confine(self, spec: JobSpec) -> JobSpec:
        inputs = [confine_input(f"inputs[{i}]", v, self.settings.roots) for i, v in enumerate(spec.inputs)]
        output = confine_output(spec.output, self.settings.outputs)
        return spec.model_copy(update={"inputs": inputs, "output": output})

    async def submit(self, spec: JobSpec, idempotency_key: str | None) -> tuple[dict, bool]:
        """Returns (job view, created)."""
        spec = self.confine(spec)
        job_id = spec.job_id()
        if idempotency_key:
            same = [r for r in self.rows.values() if r["idempotency_key"] == idempotency_key]
            if same:
                if same[0]["job_id"] != job_id:
                    raise ServiceError(409, "this Idempotency-Key was used for a different job spec",
                                       code="idempotency_key_reused", details={"job_id": same[0]["job_id"]})
                return await self.view(job_id), False
        existing = self.rows.get(job_id)
        if existing:
            state = self.live.get(job_id, {}).get("state", existing["state"])
            hint = "POST /jobs/{id}/retry to resume it" if state in ("failed", "cancelled") else "see GET /jobs/{id}"
            raise ServiceError(409, f"job {job_id} already exists ({state}); {hint.replace('{id}', job_id)}",
                               code="job_exists", details={"job_id": job_id, "state": state})
        if Path(spec.output).exists() and any(Path(spec.output).iterdir()):
            raise ServiceError(409, f"output folder {spec.output} is not empty", code="output_exists")
        row = {"job_id": job_id, "name": spec.name, "output": spec.output, "spec": spec.model_dump_json(),
               "created_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
               "idempotency_key": idempotency_key, "state": "queued", "error": None, "attempts": 0,
               "submission_id": None}
        await self._launch(row)
        return await self.view(job_id), True

    async def _launch(self, row: dict) -> None:
        row["attempts"] += 1
        row["submission_id"] = f"{row['job_id']}-{row['attempts']}-{secrets.token_hex(3)}"
        spec_b64 = base64.urlsafe_b64encode(row["spec"].encode()).decode()
        entrypoint = f"{self.settings.python()} -m workers.run --spec-b64 {spec_b64} --no-progress"
        await asyncio.to_thread(self._client.submit_job, entrypoint=entrypoint, submission_id=row["submission_id"],
                                metadata={"curate_job_id": row["job_id"]})
        row.update(state="queued", error=None)
        await self._save(row)
        self.live[row["job_id"]] = {"state": "queued", "progress": None, "checked_at": 0.0}

    async def _save(self, row: dict) -> None:
        await self.db.run(_upsert, row)
        self.rows[row["job_id"]] = dict(row)

    async def cancel(self, job_id: str) -> dict:
        row = await self._get_row(job_id)
        state = self.live.get(job_id, {}).get("state", row["state"])
        if state in TERMINAL:
            raise ServiceError(409, f"job {job_id} is already {state}", code="job_not_running")
        await asyncio.to_thread(self._client.stop_job, row["submission_id"])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if (await self.refresh(job_id))["state"] in TERMINAL:
                break
            await asyncio.sleep(0.2)
        return await self.view(job_id)

    async def retry(self, job_id: str) -> dict:
        row = await self._get_row(job_id)
        state = (await self.refresh(job_id))["state"]
        if state not in ("failed", "cancelled"):
            raise ServiceError(409, f"job {job_id} is {state}; only failed or cancelled jobs can be retried",
                               code="job_not_retryable")
        await self._launch(row)  # the driver resumes from the completion markers
        return await self.view(job_id)

    # -- queries ------------------------------------------------------------------------
    async def _get_row(self, job_id: str) -> dict:
        row = self.rows.get(job_id)
        if row is None:
            raise ServiceError(404, f"no job {job_id!r}", code="job_not_found")
        return dict(row)

    async def view(self, job_id: str) -> dict:
        await self._get_row(job_id)  # 404 for an unknown job
        live = self.live.get(job_id)
        if live is None or not live.get("checked_at"):
            live = await self.refresh(job_id)
        return self._view(self.rows[job_id], live)

    def _view(self, row: dict, live: dict) -> dict:
        state = live["state"] if row["state"] not in TERMINAL else row["state"]
        return {"job_id": row["job_id"], "name": row["name"], "state": state, "error": row["error"],
                "output": row["output"], "created_at": row["created_at"], "attempts": row["attempts"],
                "ray_submission_id": row["submission_id"], "progress": live.get("progress")}

    async def list(self) -> list[dict]:
        rows = sorted(self.rows.values(), key=lambda r: (r["created_at"], r["job_id"]))
        return [self._view(r, self.live.get(r["job_id"], {"state": r["state"]})) for r in rows]

    async def logs(self, job_id: str) -> str:
        row = await self._get_row(job_id)
        return await asyncio.to_thread(self._client.get_job_logs, row["submission_id"])

    async def stats(self, job_id: str) -> dict:
        row = await self._get_row(job_id)
        stats = await asyncio.to_thread(job_stats, row["output"])
        if stats is None:
            raise ServiceError(409, f"job {job_id} has not started yet", code="job_not_started")
        return stats

    async def document(self, job_id: str, doc_id: str) -> dict:
        row = await self._get_row(job_id)
        await self._ensure_registered(row)
        try:
            answer = await self.db.run(_why, job_id, doc_id)
        except CatalogError as exc:
            raise ServiceError(404, str(exc), code="job_not_found") from None
        if answer["outcome"] == "unknown":
            raise ServiceError(404, f"document {doc_id!r} never reached any stage of job {job_id}",
                               code="document_not_found")
        return answer

    async def drops(self, job_id: str, stage: str | None, reason: str | None, limit: int) -> list[dict]:
        row = await self._get_row(job_id)
        await self._ensure_registered(row)
        rows = await self.db.run(_drops, job_id, stage, reason, limit)
        spec = JobSpec.model_validate_json(row["spec"])
        return await asyncio.to_thread(_with_previews, rows, spec.columns.text)

    async def _ensure_registered(self, row: dict) -> None:
        if not JobLayout(row["output"]).job_file.exists():
            raise ServiceError(409, f"job {row['job_id']} has not started yet", code="job_not_started")
        if row["state"] not in TERMINAL:  # a running job: refresh its lineage view
            await self.db.run(_register, row["output"], None)

    async def preview(self, job_id: str, stage: str, params: dict) -> dict:
        row = await self._get_row(job_id)
        if not JobLayout(row["output"]).job_file.exists():
            raise ServiceError(409, f"job {job_id} has not started yet", code="job_not_started")
        try:
            return await asyncio.to_thread(preview_selection, row["output"], stage, params)
        except ReselectError as exc:
            raise ServiceError(409 if "not scored" in str(exc) else 422, str(exc), code="cannot_reselect") from None
        except ValidationError as exc:
            details = [{"loc": "params." + ".".join(map(str, e["loc"])), "msg": e["msg"]} for e in exc.errors()]
            raise ServiceError(422, "; ".join(f"{d['loc']}: {d['msg']}" for d in details),
                               code="invalid_request", details=details) from None

    async def manifest(self, job_id: str) -> dict:
        row = await self._get_row(job_id)
        path = JobLayout(row["output"]).manifest
        if not path.exists():
            raise ServiceError(409, f"job {job_id} has no manifest yet (state: {row['state']})",
                               code="job_not_complete")
        return await asyncio.to_thread(atomic.read_json, path)

    async def output_file(self, job_id: str, name: str) -> tuple[Path, dict]:
        manifest = await self.manifest(job_id)
        row = await self._get_row(job_id)
        for f in manifest["files"]:
            if Path(f["path"]).name == name:
                return JobLayout(row["output"]).root / f["path"], f
        raise ServiceError(404, f"job {job_id} has no output file {name!r}", code="file_not_found",
                           details={"files": [Path(f["path"]).name for f in manifest["files"]]})

