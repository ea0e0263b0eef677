"""The use cases of the control plane: submit, cancel, retry, and answer queries.

Jobs run as Ray jobs (driver ``python -m workers.job_entrypoint``), so they outlive an
API restart and show up in Ray's own tooling. While a job runs, its state comes from
Ray (``RayJobs``); the record lives in the catalog (``JobStore``); progress, statistics
and failures (``error.json``) come from the job folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from service import pagination
from service.catalog import TERMINAL, Catalog, CatalogError
from service.errors import ServiceError
from service.job_events import JobEvents
from service.job_store import Database, JobStore
from service.paths import confine_spec
from service.ray_jobs import RayJobs
from service.settings import Settings
from workers import atomic
from workers.job_folder import JobFolder
from workers.progress import job_progress, job_stats
from workers.reselect import ReselectError, preview_selection
from workers.shards import InputError, discover
from workers.spec import JobSpec

PLAN_SECONDS = 600  # a dry run that takes longer is stopped
PLAN_REUSE_SECONDS = 600


def _plan_key(spec: JobSpec) -> str:
    """What a plan depends on: the stages, columns and execution, and the input files as
    they are now (path, size, modification time); not the job's name or output folder."""
    files = []
    for path in discover(spec.inputs):
        st = Path(path).stat() if "://" not in path else None
        files.append([path, st.st_size if st else None, st.st_mtime_ns if st else None])
    data = spec.model_dump(mode="json", include={"stages", "columns", "execution"})
    return hashlib.sha256(json.dumps([data, files], sort_keys=True).encode()).hexdigest()

log = logging.getLogger("curate.api")


class JobService:
    def __init__(self, settings: Settings, db: Database, ray: RayJobs) -> None:
        self.settings, self.db, self.ray = settings, db, ray
        self.store = JobStore(db)
        self._launching: dict[str, str] = {}  # output folder → job id, while its submission is in flight
        self.live: dict[str, dict] = {}  # job_id -> {"state", "progress", "checked_at"}: Ray's view, cached
        self._poller: asyncio.Task | None = None
        self.events = JobEvents()
        # Dry runs: one planner at a time (each runs the stages, models included), and a plan
        # reused for the same stages over the same unchanged input files for PLAN_REUSE_SECONDS.
        self._planning = asyncio.Semaphore(1)
        self._plans: dict[str, tuple[float, dict]] = {}

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        await self.ray.connect()
        await self.store.load()
        for row in self.store.all():
            self.live[row["job_id"]] = {"state": row["state"], "progress": None, "checked_at": 0.0}
        self._poller = asyncio.create_task(self._poll_forever())

    async def stop(self) -> None:
        if self._poller:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    async def ready(self) -> dict[str, bool]:
        try:
            duckdb_ok = await self.db.run(Catalog.ping)
        except Exception:  # noqa: BLE001 - reported as not ready
            duckdb_ok = False
        return {"duckdb": duckdb_ok, "ray": await self.ray.reachable()}

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
        try:
            return await self._refresh(job_id)
        finally:
            self.events.changed(job_id)

    async def _refresh(self, job_id: str) -> dict:
        row = self._row(job_id)
        live = self.live.setdefault(job_id, {"state": row["state"], "progress": None, "checked_at": 0.0})
        if row["state"] in TERMINAL:  # final: Ray need not remember it (e.g. after a restart)
            if live.get("progress") is None:
                live["progress"] = await asyncio.to_thread(job_progress, row["output"])
                live["checked_at"] = time.time()
            live["state"] = row["state"]
            return live
        state, ray_message = await self.ray.state(row["submission_id"])
        live["progress"] = await asyncio.to_thread(job_progress, row["output"])
        live["checked_at"] = time.time()
        if state is None:
            state = "failed"
            row.update(error_code="ray_forgot", error=(
                f"Ray has no record of submission {row['submission_id']} (was the cluster restarted?); "
                f"POST /jobs/{job_id}/retry resumes the job from its completion markers"))
        elif state == "failed":
            recorded = JobFolder(row["output"]).error()  # what the driver wrote, as data
            row.update(error_code=recorded["code"] if recorded else "driver_failed",
                       error=recorded["message"] if recorded else (ray_message or "the job driver failed"))
        if state in TERMINAL:
            row["state"] = state
            if state != "failed":
                row.update(error=None, error_code=None)
            await self.store.save(row)
            if JobFolder(row["output"]).started():
                await self.store.register_folder(row)
        live["state"] = state
        return live

    # -- commands -----------------------------------------------------------------------
    def confine(self, spec: JobSpec) -> JobSpec:
        s = self.settings
        return confine_spec(spec, s.roots, s.outputs, s.file_roots)

    async def submit(self, spec: JobSpec, idempotency_key: str | None) -> tuple[dict, bool]:
        """Returns (job view, created)."""
        spec = self.confine(spec)
        job_id = spec.job_id()
        if idempotency_key:
            same = self.store.by_idempotency_key(idempotency_key)
            if same:
                if same["job_id"] != job_id:
                    raise ServiceError(409, "this Idempotency-Key was used for a different job spec",
                                       code="idempotency_key_reused", details={"job_id": same["job_id"]})
                return await self.view(job_id), False
        existing = self.store.get(job_id)
        if existing:
            state = self.live.get(job_id, {}).get("state", existing["state"])
            hint = f"POST /jobs/{job_id}/retry to resume it" if state in ("failed", "cancelled") else \
                f"see GET /jobs/{job_id}"
            raise ServiceError(409, f"job {job_id} already exists ({state}); {hint}", code="job_exists",
                               details={"job_id": job_id, "state": state})
        user = self._output_user(spec.output)
        if user:
            raise ServiceError(409, f"output folder {spec.output} is in use by job {user}", code="output_in_use",
                               details={"job_id": user})
        if Path(spec.output).exists() and any(Path(spec.output).iterdir()):
            raise ServiceError(409, f"output folder {spec.output} is not empty", code="output_exists")
        row = {"job_id": job_id, "name": spec.name, "output": spec.output, "spec": spec.model_dump_json(),
               "created_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
               "idempotency_key": idempotency_key, "state": "queued", "error": None, "error_code": None,
               "attempts": 0, "submission_id": None}
        # Reserved from the check above (no await in between) until the job is in the store:
        # two submissions racing for one folder cannot both pass.
        self._launching[spec.output] = job_id
        try:
            await self._launch(row)
        finally:
            del self._launching[spec.output]
        return await self.view(job_id), True

    def _output_user(self, output: str) -> str | None:
        """The job that is launching or still running in ``output``, if any."""
        if output in self._launching:
            return self._launching[output]
        for row in self.store.all():
            if row["output"] == output and self.live.get(row["job_id"], {}).get("state", row["state"]) \
                    not in TERMINAL:
                return row["job_id"]
        return None

    async def _launch(self, row: dict) -> None:
        row["attempts"] += 1
        row["submission_id"] = f"{row['job_id']}-{row['attempts']}-{secrets.token_hex(3)}"
        await self.ray.submit(row["submission_id"], row["spec"], row["job_id"])
        row.update(state="queued", error=None, error_code=None)
        await self.store.save(row)
        self.live[row["job_id"]] = {"state": "queued", "progress": None, "checked_at": 0.0}

    async def cancel(self, job_id: str) -> dict:
        row = self._row(job_id)
        state = self.live.get(job_id, {}).get("state", row["state"])
        if state in TERMINAL:
            raise ServiceError(409, f"job {job_id} is already {state}", code="job_not_running")
        await self.ray.stop(row["submission_id"])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if (await self.refresh(job_id))["state"] in TERMINAL:
                break
            await asyncio.sleep(0.2)
        return await self.view(job_id)

    async def retry(self, job_id: str) -> dict:
        state = (await self.refresh(job_id))["state"]
        if state not in ("failed", "cancelled"):
            raise ServiceError(409, f"job {job_id} is {state}; only failed or cancelled jobs can be retried",
                               code="job_not_retryable")
        await self._launch(self._row(job_id))  # the driver resumes from the completion markers
        return await self.view(job_id)

    # -- queries ------------------------------------------------------------------------
    def _row(self, job_id: str) -> dict:
        row = self.store.get(job_id)
        if row is None:
            raise ServiceError(404, f"no job {job_id!r}", code="job_not_found")
        return row

    async def view(self, job_id: str) -> dict:
        self._row(job_id)  # 404 for an unknown job
        live = self.live.get(job_id)
        if live is None or not live.get("checked_at"):
            live = await self.refresh(job_id)
        return self._view(self._row(job_id), live)

    def _view(self, row: dict, live: dict) -> dict:
        state = live["state"] if row["state"] not in TERMINAL else row["state"]
        return {"job_id": row["job_id"], "name": row["name"], "state": state, "error": row["error"],
                "error_code": row.get("error_code"), "output": row["output"], "created_at": row["created_at"],
                "attempts": row["attempts"], "ray_submission_id": row["submission_id"],
                "progress": live.get("progress")}

    async def list(self, limit: int, cursor: str | None) -> dict:
        """A page of jobs, oldest first."""
        after = pagination.decode(cursor, 2)
        rows = [r for r in self.store.all() if after is None or [r["created_at"], r["job_id"]] > after]
        views = [self._view(r, self.live.get(r["job_id"], {"state": r["state"]})) for r in rows[:limit + 1]]
        return pagination.page(views, limit, lambda v: [v["created_at"], v["job_id"]])

    async def recent(self, limit: int) -> list[dict]:
        """The newest ``limit`` jobs, newest first (for the dashboard)."""
        rows = sorted(self.store.all(), key=lambda r: (r["created_at"], r["job_id"]), reverse=True)[:limit]
        return [self._view(r, self.live.get(r["job_id"], {"state": r["state"]})) for r in rows]

    async def logs(self, job_id: str) -> str:
        row = self._row(job_id)
        try:
            return await self.ray.logs(row["submission_id"])
        except Exception as exc:  # noqa: BLE001 - the Jobs client raises RuntimeError for a 404, and others
            if "does not exist" not in str(exc) and "404" not in str(exc):
                raise
            raise ServiceError(404, f"the driver log of job {job_id} is gone: Ray keeps a job's log only on the "
                                    "cluster that ran it (a restarted local head, or a job from a rebuilt "
                                    "catalog); the outcome is in the job's stats and error",
                               code="logs_unavailable") from None

    def _started(self, row: dict) -> JobFolder:
        folder = JobFolder(row["output"])
        if not folder.started():
            raise ServiceError(409, f"job {row['job_id']} has not started yet", code="job_not_started")
        return folder

    async def stats(self, job_id: str) -> dict:
        row = self._row(job_id)
        self._started(row)
        return await asyncio.to_thread(job_stats, row["output"])

    async def _registered(self, row: dict) -> None:
        self._started(row)
        if row["state"] not in TERMINAL:  # a running job: refresh its lineage view
            await self.store.register_folder(row)

    async def document(self, job_id: str, doc_id: str) -> dict:
        row = self._row(job_id)
        await self._registered(row)
        try:
            answer = await self.db.run(lambda c: c.why(job_id, doc_id))
        except CatalogError as exc:
            raise ServiceError(404, str(exc), code="job_not_found") from None
        if answer["outcome"] == "unknown":
            raise ServiceError(404, f"document {doc_id!r} never reached any stage of job {job_id}",
                               code="document_not_found")
        return answer

    async def documents(self, job_id: str, *, limit: int, cursor: str | None, **filters: str | None) -> dict:
        """A page of lineage rows (stage, decision, reason, change filters), in (stage, doc) order."""
        row = self._row(job_id)
        await self._registered(row)
        after = pagination.decode(cursor, 2)
        rows = await self.db.run(lambda c: c.lineage_rows(job_id, limit=limit + 1, after=after, **filters))
        return pagination.page(rows, limit, lambda r: [r["stage_index"], r["doc_id"]])

    async def reason_examples(self, job_id: str, per_reason: int = 3) -> list[dict]:
        row = self._row(job_id)
        await self._registered(row)
        return await self.db.run(lambda c: c.reason_examples(job_id, per_reason))

    async def cluster(self, job_id: str, stage: str, cluster_id: str, limit: int = 50) -> list[dict]:
        row = self._row(job_id)
        await self._registered(row)
        return await self.db.run(lambda c: c.cluster_members(job_id, stage, cluster_id, limit))

    async def drops(self, job_id: str, stage: str | None, reason: str | None, limit: int, cursor: str | None) -> dict:
        """A page of dropped documents with the start of the text the dropping stage saw."""
        return await self.samples(job_id, stage=stage, decision="drop", reason=reason, limit=limit, cursor=cursor)

    async def samples(self, job_id: str, *, stage: str | None, decision: str, reason: str | None, limit: int,
                      cursor: str | None = None) -> dict:
        """A page of lineage rows with the start of the text each document had at that stage."""
        result = await self.documents(job_id, limit=limit, cursor=cursor, decision=decision, stage=stage,
                                      reason=reason)
        spec = JobSpec.model_validate_json(self._row(job_id)["spec"])
        texts = await asyncio.to_thread(JobFolder(self._row(job_id)["output"]).texts, result["items"],
                                        spec.columns.text)
        for r, t in zip(result["items"], texts, strict=True):
            r["text_preview"] = None if t is None else t[:300]
        return result

    async def preview(self, job_id: str, stage: str, params: dict) -> dict:
        row = self._row(job_id)
        self._started(row)
        try:
            return await asyncio.to_thread(preview_selection, row["output"], stage, params)
        except ReselectError as exc:
            raise ServiceError(409 if exc.code == "not_scored" else 422, str(exc), code="cannot_reselect",
                               details={"reason": exc.code}) from None
        except ValidationError as exc:
            details = [{"loc": "params." + ".".join(map(str, e["loc"])), "msg": e["msg"]} for e in exc.errors()]
            raise ServiceError(422, "; ".join(f"{d['loc']}: {d['msg']}" for d in details),
                               code="invalid_request", details=details) from None

    async def manifest(self, job_id: str) -> dict:
        row = self._row(job_id)
        folder = JobFolder(row["output"])
        if not folder.complete():
            raise ServiceError(409, f"job {job_id} has no manifest yet (state: {row['state']})",
                               code="job_not_complete")
        return await asyncio.to_thread(atomic.read_json, folder.manifest)

    def artifacts(self, job_id: str) -> dict[str, dict[str, str]]:
        """Files the job's fits wrote (a trained classifier, a calibration report), by stage
        folder, with the SHA256 recorded in job.json; a running job lists what is done."""
        folder = JobFolder(self._row(job_id)["output"])
        try:
            return folder.job().get("artifacts", {})
        except FileNotFoundError:
            return {}

    async def plan(self, spec: JobSpec, timeout: float = PLAN_SECONDS) -> dict:
        """``curate plan`` for a spec, run as a Ray job on the cluster (it loads the stages'
        models, which the API process must not); nothing is launched or written."""
        spec = self.confine(spec)
        try:
            key = await asyncio.to_thread(_plan_key, spec)
        except (InputError, OSError) as exc:
            raise ServiceError(422, f"cannot plan this job: {exc}", code="plan_failed") from None
        async with self._planning:
            cached = self._plans.get(key)
            if cached and time.monotonic() - cached[0] < PLAN_REUSE_SECONDS:
                return cached[1]
            plan = await self._plan_on_cluster(spec, timeout)
            self._plans = {k: v for k, v in self._plans.items() if time.monotonic() - v[0] < PLAN_REUSE_SECONDS}
            self._plans[key] = (time.monotonic(), plan)
            return plan

    async def _plan_on_cluster(self, spec: JobSpec, timeout: float) -> dict:
        submission = f"plan-{spec.job_id()}-{secrets.token_hex(4)}"
        out = await self.ray.submit_plan(submission, spec.model_dump_json())
        deadline = time.monotonic() + timeout
        try:
            while True:
                state, message = await self.ray.state(submission)
                if state == "succeeded":
                    return json.loads(await asyncio.to_thread(out.read_text))
                if state in ("failed", "cancelled", None):
                    logs = await self.ray.logs(submission) if state else ""
                    errors = [line for line in logs.splitlines() if line.startswith("error: ")]
                    why = errors[-1].removeprefix("error: ") if errors else (message or "the planner stopped")
                    raise ServiceError(422, f"cannot plan this job: {why}", code="plan_failed")
                if time.monotonic() > deadline:
                    await self.ray.stop(submission)
                    raise ServiceError(422, f"planning took longer than {timeout:.0f} s; lower the sample or plan "
                                       "with `curate plan` on the cluster", code="plan_failed")
                await asyncio.sleep(0.5)
        finally:
            with contextlib.suppress(OSError):
                out.unlink(missing_ok=True)
                out.with_name(f"{submission}.json").unlink(missing_ok=True)

    def contamination(self, job_id: str) -> dict:
        from workers.contamination_report import NoDecontamination, contamination_reports

        folder = JobFolder(self._row(job_id)["output"])
        if not folder.started():
            raise ServiceError(409, f"job {job_id} has not started yet", code="job_not_started")
        try:
            return {"job_id": job_id, "stages": contamination_reports(folder)}
        except NoDecontamination as exc:
            raise ServiceError(404, str(exc), code="stage_not_found") from None

    def artifact_file(self, job_id: str, stage: str, name: str) -> tuple[Path, str]:
        """Only a file recorded in job.json is served (no path from the request is opened)."""
        recorded = self.artifacts(job_id)
        if stage not in recorded or name not in recorded[stage]:
            raise ServiceError(404, f"job {job_id} has no artifact {stage}/{name}", code="file_not_found",
                               details={"artifacts": {k: sorted(v) for k, v in recorded.items()}})
        folder = JobFolder(self._row(job_id)["output"])
        return folder.root / "stages" / stage / "artifacts" / name, recorded[stage][name]

    async def output_file(self, job_id: str, name: str) -> tuple[Path, dict]:
        manifest = await self.manifest(job_id)
        root = JobFolder(self._row(job_id)["output"]).root
        for f in manifest["files"]:
            if Path(f["path"]).name == name:
                return root / f["path"], f
        raise ServiceError(404, f"job {job_id} has no output file {name!r}", code="file_not_found",
                           details={"files": [Path(f["path"]).name for f in manifest["files"]]})
