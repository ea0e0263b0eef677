"""Routes: parse, call one service function, return a schema."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from service.deps import AdminKey, Jobs, ReadKey
from service.errors import ErrorBody, ServiceError
from workers.spec import JobSpec

router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 422)
}

EXAMPLE_SPEC = {
    "name": "web-pool-v1",
    "inputs": ["web/combined_web_pool.parquet"],
    "output": "web-pool-v1",
    "stages": [{"stage": "exact_dedup_v1"}, {"stage": "quality_rules_v1", "params": {"min_words": 50}}],
}


class Job(BaseModel):
    job_id: str
    name: str
    state: str = Field(description="queued, running, succeeded, failed or cancelled")
    error: str | None = None
    error_code: str | None = Field(None, description="why it failed, as a code: bad_input, stage_failed, "
                                   "model_load_failed, resources_unavailable, ...")
    output: str
    created_at: str
    attempts: int
    ray_submission_id: str | None
    progress: dict | None = Field(None, description="per stage: units done / total, docs in / out / created; ETA")


class Preview(BaseModel):
    stage: str = Field(description="stage name (or index) in this job", examples=["quality_rules_v1"])
    params: dict[str, Any] = Field(default_factory=dict, examples=[{"min_words": 30}])


class Health(BaseModel):
    status: str
    checks: dict[str, bool] = Field(default_factory=dict)


@router.get("/healthz", response_model=Health, tags=["health"])
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, tags=["health"], responses={503: {"model": ErrorBody}})
async def readyz(jobs: Jobs):
    """DuckDB and Ray are reachable."""
    checks = await jobs.ready()
    if not all(checks.values()):
        raise ServiceError(503, "not ready", code="unavailable", details=checks)
    return Health(status="ready", checks=checks)


@router.post("/jobs", response_model=Job, status_code=201, tags=["jobs"], responses=ERRORS)
async def submit_job(
    jobs: Jobs, _: AdminKey,
    spec: Annotated[JobSpec, Body(examples=[EXAMPLE_SPEC])],
    idempotency_key: Annotated[str | None, Header(max_length=200, description="a retried POST with the same key "
                                                  "returns the first job instead of launching again")] = None,
):
    """Validate the spec, confine its paths, and launch it as a Ray job."""
    view, created = await jobs.submit(spec, idempotency_key)
    return JSONResponse(Job(**view).model_dump(), status_code=201 if created else 200)


@router.get("/jobs", response_model=list[Job], tags=["jobs"], responses=ERRORS)
async def list_jobs(jobs: Jobs, _: ReadKey) -> list[Job]:
    return [Job(**v) for v in await jobs.list()]


@router.get("/jobs/{job_id}", response_model=Job, tags=["jobs"], responses=ERRORS)
async def get_job(job_id: str, jobs: Jobs, _: ReadKey) -> Job:
    """State and per-stage progress."""
    return Job(**await jobs.view(job_id))


@router.post("/jobs/{job_id}/cancel", response_model=Job, tags=["jobs"], responses=ERRORS)
async def cancel_job(job_id: str, jobs: Jobs, _: AdminKey) -> Job:
    return Job(**await jobs.cancel(job_id))


@router.post("/jobs/{job_id}/retry", response_model=Job, tags=["jobs"], responses=ERRORS)
async def retry_job(job_id: str, jobs: Jobs, _: AdminKey) -> Job:
    """Relaunch a failed or cancelled job; finished shards and steps are skipped."""
    return Job(**await jobs.retry(job_id))


@router.get("/jobs/{job_id}/logs", response_class=PlainTextResponse, tags=["jobs"], responses=ERRORS)
async def job_logs(job_id: str, jobs: Jobs, _: ReadKey) -> str:
    """The driver's output, from Ray."""
    return await jobs.logs(job_id)


@router.get("/jobs/{job_id}/stats", tags=["lineage"], responses=ERRORS)
async def job_stats(job_id: str, jobs: Jobs, _: ReadKey) -> dict:
    """The funnel per stage and per shard."""
    return await jobs.stats(job_id)


@router.get("/jobs/{job_id}/documents/{doc_id:path}", tags=["lineage"], responses=ERRORS)
async def document_lineage(job_id: str, doc_id: str, jobs: Jobs, _: ReadKey) -> dict:
    """Every stage the document reached (scores, decision, reason, cluster and survivor),
    the sources it was created from (``sources``) and the documents created from it
    (``children``)."""
    return await jobs.document(job_id, doc_id)


@router.get("/jobs/{job_id}/drops", tags=["lineage"], responses=ERRORS)
async def dropped_documents(
    job_id: str, jobs: Jobs, _: ReadKey,
    stage: Annotated[str | None, Query(max_length=200)] = None,
    reason: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> list[dict]:
    """Dropped documents with their reason, scores and the start of their text."""
    return await jobs.drops(job_id, stage, reason, limit)


@router.post("/jobs/{job_id}/preview-selection", tags=["lineage"], responses=ERRORS)
async def preview_selection(job_id: str, body: Preview, jobs: Jobs, _: ReadKey) -> dict:
    """Re-apply other thresholds to the stored scores of one stage; nothing is recomputed."""
    return await jobs.preview(job_id, body.stage, body.params)


@router.get("/jobs/{job_id}/manifest", tags=["outputs"], responses=ERRORS)
async def job_manifest(job_id: str, jobs: Jobs, _: ReadKey) -> dict:
    return await jobs.manifest(job_id)


@router.get("/jobs/{job_id}/outputs/{file_name}", tags=["outputs"], response_class=FileResponse,
            responses={**ERRORS, 200: {"content": {"application/vnd.apache.parquet": {}},
                                       "description": "the shard; header X-Content-SHA256 holds its sha256"}})
async def download_output(job_id: str, file_name: str, jobs: Jobs, _: ReadKey) -> FileResponse:
    path, facts = await jobs.output_file(job_id, file_name)
    return FileResponse(path, media_type="application/vnd.apache.parquet", filename=file_name,
                        headers={"X-Content-SHA256": facts["sha256"], "ETag": f'"{facts["sha256"]}"'})
