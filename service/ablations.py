"""Ablations over the REST API: launch ``curate ablate`` on a finished job as a Ray job
(driver ``python -m workers.ablate_entrypoint``), report its state, serve its result and
plot. The result lives in the job folder (``ablations/<id>/``); the catalog keeps which
Ray submission ran which ablation."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime
from pathlib import Path

from service.catalog import Catalog
from service.errors import ServiceError
from service.jobs import JobService
from service.paths import confine_file
from workers import atomic
from workers.ablate import AblationParams, ablation_id
from workers.job_folder import JobFolder


class AblationService:
    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs

    def _folder(self, job_id: str) -> JobFolder:
        row = self.jobs._row(job_id)  # 404 for an unknown job
        folder = JobFolder(row["output"])
        if not folder.complete():
            raise ServiceError(409, f"job {job_id} has not finished (state: {row['state']}); ablations compare a "
                               "finished job's selection", code="job_not_complete")
        return folder

    async def submit(self, job_id: str, params: AblationParams) -> tuple[dict, bool]:
        """Returns (ablation view, created); the same params on the same job are one ablation."""
        folder = self._folder(job_id)
        roots = self.jobs.settings.roots + self.jobs.settings.file_roots  # the eval set is data
        params = params.model_copy(update={
            "eval": confine_file("eval", params.eval, roots),
            "tokenizer": params.tokenizer and confine_file("tokenizer", params.tokenizer, roots)})
        for field in ("eval", "tokenizer"):
            value = getattr(params, field)
            if value and not Path(value).is_file():
                raise ServiceError(422, f"{field}: not a file: {value}", code="invalid_request")
        eval_sha = await asyncio.to_thread(atomic.sha256_file, Path(params.eval))
        aid = ablation_id(folder.job()["spec_hash"], params, eval_sha)
        current = await self.view(job_id, aid, missing_ok=True)
        if current and current["state"] in ("queued", "running", "succeeded"):
            return current, False
        (folder.ablation_dir(aid) / "error.json").unlink(missing_ok=True)  # a failed earlier try's, now stale
        submission_id = f"{aid}-{secrets.token_hex(3)}"
        await self.jobs.ray.submit_ablation(submission_id, str(folder.root), params.model_dump_json(), aid, job_id)
        row = {"ablation_id": aid, "job_id": job_id, "submission_id": submission_id,
               "params": params.model_dump(), "created_at": datetime.now(UTC).isoformat(timespec="milliseconds")}
        await self.jobs.db.run(Catalog.save_ablation_submission, row)
        return await self.view(job_id, aid), True

    async def view(self, job_id: str, aid: str, *, missing_ok: bool = False) -> dict | None:
        folder = JobFolder(self.jobs._row(job_id)["output"])
        where = folder.ablation_dir(aid)
        submissions = [s for s in await self.jobs.db.run(Catalog.ablation_submissions, job_id)
                       if s["ablation_id"] == aid]
        last = submissions[-1] if submissions else None
        view = {"ablation_id": aid, "job_id": job_id, "ray_submission_id": last and last["submission_id"],
                "state": None, "error": None, "error_code": None, "result": None}
        if (where / "result.json").exists():
            result = await asyncio.to_thread(atomic.read_json, where / "result.json")
            recorded = {r["ablation_id"] for r in await self.jobs.db.run(Catalog.ablation_arms, job_id)}
            if aid not in recorded:  # finished since the last look: record it with the job's lineage
                await self.jobs.store.register_folder(self.jobs._row(job_id))
            return {**view, "state": "succeeded", "result": result}
        if last is None:
            if missing_ok:
                return None
            raise ServiceError(404, f"job {job_id} has no ablation {aid!r}", code="ablation_not_found")
        state, message = await self.jobs.ray.state(last["submission_id"])
        view["state"] = state or "failed"
        if view["state"] == "failed":
            error = atomic.read_json(where / "error.json") if (where / "error.json").exists() else None
            view["error_code"] = error["code"] if error else ("ray_forgot" if state is None else "driver_failed")
            view["error"] = error["message"] if error else (message or "the ablation driver failed")
        return view

    async def list(self, job_id: str) -> list[dict]:
        folder = JobFolder(self.jobs._row(job_id)["output"])
        ids = {s["ablation_id"] for s in await self.jobs.db.run(Catalog.ablation_submissions, job_id)}
        ids |= {r["ablation_id"] for r in await asyncio.to_thread(folder.ablation_results)}
        views = [await self.view(job_id, aid) for aid in sorted(ids)]
        return [v for v in views if v is not None]

    async def plot(self, job_id: str, aid: str) -> Path:
        path = JobFolder(self.jobs._row(job_id)["output"]).ablation_dir(aid) / "plot.png"
        if not path.exists():
            raise ServiceError(404, f"ablation {aid!r} of job {job_id} has no plot (not finished?)",
                               code="ablation_not_found")
        return path
