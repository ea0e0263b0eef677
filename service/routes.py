"""Routes: parse, call one service function, return a schema."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Path, Query
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse

from service.deps import Ablations, AdminKey, Jobs, ReadKey
from service.errors import ErrorBody, ServiceError
from service.job_events import stream
from service.pagination import MAX_LIMIT
from service.schemas import (
    Ablation,
    ContaminationReports,
    DocumentLineage,
    DocumentRow,
    DropRow,
    Health,
    Job,
    JobPlan,
    JobStats,
    Manifest,
    Page,
    Preview,
    PreviewResult,
)
from workers.ablate import AblationParams
from workers.spec import JobSpec

router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 422)
}
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"page size (at most {MAX_LIMIT})")]
Cursor = Annotated[str | None, Query(max_length=2000, description="the `next` value of the previous page")]
Filter = Annotated[str | None, Query(max_length=200)]
AblationId = Annotated[str, Path(pattern=r"^abl-[0-9a-f]{12}$", description="as POST returned it")]



def _links(job_id: str, *operations: str, **more: str) -> dict[str, Any]:
    """OpenAPI links: where a response's ids lead (clients and Schemathesis' stateful
    tests follow them). Operation ids are the route functions' names."""
    return {"links": {op: {"operationId": op, "parameters": {"job_id": job_id, **more}} for op in operations}}


_FROM_JOB = ("get_job", "job_events", "cancel_job", "retry_job", "job_logs", "job_stats", "list_documents",
             "dropped_documents", "job_manifest", "list_artifacts", "contamination", "list_ablations")
JOB_LINKS = _links("$response.body#/job_id", *_FROM_JOB)
FIRST_JOB_LINKS = _links("$response.body#/items/0/job_id", *_FROM_JOB)
FIRST_DOC_LINKS = _links("$request.path.job_id", "document_lineage", doc_id="$response.body#/items/0/doc_id")

EXAMPLE_SPEC = {
    "name": "web-pool-v1",
    "inputs": ["web/combined_web_pool.parquet"],
    "output": "web-pool-v1",
    "stages": [{"stage": "exact_dedup_v1"}, {"stage": "quality_rules_v1", "params": {"min_words": 50}}],
}


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


@router.post("/jobs", response_model=Job, status_code=201, tags=["jobs"],
             responses={**ERRORS, 201: JOB_LINKS,
                        200: {"model": Job | JobPlan, "description": "a retried POST with the same "
                              "Idempotency-Key: the job it launched; or, with dry_run, the plan", **JOB_LINKS}})
async def submit_job(
    jobs: Jobs, _: AdminKey,
    spec: Annotated[JobSpec, Body(examples=[EXAMPLE_SPEC])],
    idempotency_key: Annotated[str | None, Header(max_length=200, description="a retried POST with the same key "
                                                  "returns the first job instead of launching again")] = None,
    dry_run: Annotated[bool, Query(description="launch nothing: measure the job on a sample of its input and "
                                   "return the estimated documents, tokens, CPU and wall time, fit memory and "
                                   "disk per stage (as `curate plan`)")] = False,
):
    """Validate the spec, confine its paths, and launch it as a Ray job (201, with the
    job's URL in ``Location``). With ``dry_run=true``, plan it instead (200)."""
    if dry_run:
        return JSONResponse(JobPlan(**await jobs.plan(spec)).model_dump(), status_code=200)
    view, created = await jobs.submit(spec, idempotency_key)
    return JSONResponse(Job(**view).model_dump(), status_code=201 if created else 200,
                        headers={"Location": f"/jobs/{view['job_id']}"})


@router.get("/jobs", response_model=Page[Job], tags=["jobs"], responses={**ERRORS, 200: FIRST_JOB_LINKS})
async def list_jobs(jobs: Jobs, _: ReadKey, limit: Limit = 100, cursor: Cursor = None) -> Page[Job]:
    """Jobs, oldest first, a page at a time."""
    return Page[Job](**await jobs.list(limit, cursor))


@router.get("/jobs/{job_id}", response_model=Job, tags=["jobs"], responses=ERRORS)
async def get_job(job_id: str, jobs: Jobs, _: ReadKey) -> Job:
    """State and per-stage progress."""
    return Job(**await jobs.view(job_id))


@router.get("/jobs/{job_id}/events", tags=["jobs"], response_class=StreamingResponse,
            responses={**ERRORS, 200: {"content": {"text/event-stream": {}},
                                       "description": "`event: job` with the body of GET /jobs/{job_id} at each "
                                       "change; ends after succeeded, failed or cancelled"}})
async def job_events(job_id: str, jobs: Jobs, _: ReadKey) -> StreamingResponse:
    """Live state and progress as server-sent events (``EventSource``): one stream instead
    of polling GET /jobs/{job_id}."""
    await jobs.view(job_id)  # an unknown job is a 404 before the stream starts

    async def view(job: str) -> dict:
        return Job(**await jobs.view(job)).model_dump(mode="json")

    return StreamingResponse(stream(jobs.events, job_id, view), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


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


@router.get("/jobs/{job_id}/stats", response_model=JobStats, tags=["lineage"], responses=ERRORS)
async def job_stats(job_id: str, jobs: Jobs, _: ReadKey) -> JobStats:
    """The funnel per stage and per work unit."""
    return JobStats(**await jobs.stats(job_id))


@router.get("/jobs/{job_id}/documents", response_model=Page[DocumentRow], tags=["lineage"],
            responses={**ERRORS, 200: FIRST_DOC_LINKS})
async def list_documents(
    job_id: str, jobs: Jobs, _: ReadKey, stage: Filter = None,
    decision: Annotated[Literal["keep", "drop"] | None, Query()] = None, reason: Filter = None,
    change: Annotated[Literal["edited", "created"] | None, Query()] = None, limit: Limit = 100, cursor: Cursor = None,
) -> Page[DocumentRow]:
    """Lineage rows (decision, reason, scores, change, parent) in stage and document order,
    a page at a time; filter by stage, decision, reason or change."""
    return Page[DocumentRow](**await jobs.documents(job_id, limit=limit, cursor=cursor, stage=stage,
                                                   decision=decision, reason=reason, change=change))


@router.get("/jobs/{job_id}/documents/{doc_id:path}", response_model=DocumentLineage, tags=["lineage"],
            responses=ERRORS)
async def document_lineage(job_id: str, doc_id: str, jobs: Jobs, _: ReadKey) -> DocumentLineage:
    """Every stage the document reached (scores, decision, reason, cluster and survivor),
    the sources it was created from (``sources``) and the documents created from it
    (``children``)."""
    return DocumentLineage(**await jobs.document(job_id, doc_id))


@router.get("/jobs/{job_id}/drops", response_model=Page[DropRow], tags=["lineage"],
            responses={**ERRORS, 200: FIRST_DOC_LINKS})
async def dropped_documents(job_id: str, jobs: Jobs, _: ReadKey, stage: Filter = None, reason: Filter = None,
                            limit: Limit = 20, cursor: Cursor = None) -> Page[DropRow]:
    """Dropped documents with their reason, scores and the start of their text, a page at a time."""
    return Page[DropRow](**await jobs.drops(job_id, stage, reason, limit, cursor))


@router.post("/jobs/{job_id}/preview-selection", response_model=PreviewResult, tags=["lineage"], responses=ERRORS)
async def preview_selection(job_id: str, body: Preview, jobs: Jobs, _: ReadKey) -> PreviewResult:
    """Re-apply other thresholds to the stored scores of one stage; nothing is recomputed."""
    return PreviewResult(**await jobs.preview(job_id, body.stage, body.params))


@router.get("/jobs/{job_id}/manifest", response_model=Manifest, tags=["outputs"], responses=ERRORS)
async def job_manifest(job_id: str, jobs: Jobs, _: ReadKey) -> Manifest:
    return Manifest(**await jobs.manifest(job_id))


@router.get("/jobs/{job_id}/outputs/{file_name}", tags=["outputs"], response_class=FileResponse,
            responses={**ERRORS, 200: {"content": {"application/vnd.apache.parquet": {}},
                                       "description": "the shard; header X-Content-SHA256 holds its sha256"}})
async def download_output(job_id: str, file_name: str, jobs: Jobs, _: ReadKey) -> FileResponse:
    path, facts = await jobs.output_file(job_id, file_name)
    return FileResponse(path, media_type="application/vnd.apache.parquet", filename=file_name,
                        headers={"X-Content-SHA256": facts["sha256"], "ETag": f'"{facts["sha256"]}"'})


@router.get("/jobs/{job_id}/artifacts", response_model=dict[str, dict[str, str]], tags=["outputs"],
            responses=ERRORS)
async def list_artifacts(job_id: str, jobs: Jobs, _: ReadKey) -> dict[str, dict[str, str]]:
    """Files the job's fits wrote (e.g. preselect_v1's fastText classifier), by stage folder,
    each with the SHA256 recorded in job.json."""
    return jobs.artifacts(job_id)


@router.get("/jobs/{job_id}/contamination", response_model=ContaminationReports, tags=["outputs"],
            responses=ERRORS)
async def contamination(job_id: str, jobs: Jobs, _: ReadKey) -> dict:
    """What each ``decontam_v1`` stage of the job found: per eval set its items, how many of
    them training documents held, and per item found the documents holding it and the best
    share of its n-grams in one document. 404 for a job without the stage."""
    return jobs.contamination(job_id)


@router.get("/jobs/{job_id}/artifacts/{stage}/{file_name}", tags=["outputs"], response_class=FileResponse,
            responses={**ERRORS, 200: {"content": {"application/octet-stream": {}},
                                       "description": "the file; header X-Content-SHA256 holds its sha256"}})
async def download_artifact(job_id: str, stage: str, file_name: str, jobs: Jobs, _: AdminKey) -> FileResponse:
    """Download a fit's file, e.g. ``01-preselect_v1/preselect.bin`` to reuse through
    ``scorer:`` in another job. Needs an admin key: a trained model is more than a report."""
    path, sha = jobs.artifact_file(job_id, stage, file_name)
    return FileResponse(path, media_type="application/octet-stream", filename=file_name,
                        headers={"X-Content-SHA256": sha, "ETag": f'"{sha}"'})


@router.post("/jobs/{job_id}/ablations", response_model=Ablation, status_code=202, tags=["ablations"],
             responses={**ERRORS, 200: {"model": Ablation, "description": "this ablation exists (running or done)"}})
async def submit_ablation(job_id: str, body: AblationParams, ablations: Ablations, _: AdminKey):
    """Train small LMs on the job's curated selection, random selections of its input and each
    stage alone (exactly ``tokens`` tokens each, several seeds) and compare held-out bits per
    byte on ``eval``; runs as a Ray job. The same body on the same job is the same ablation."""
    view, created = await ablations.submit(job_id, body)
    return JSONResponse(Ablation(**view).model_dump(mode="json"), status_code=202 if created else 200)


@router.get("/jobs/{job_id}/ablations", response_model=list[Ablation], tags=["ablations"], responses=ERRORS)
async def list_ablations(job_id: str, ablations: Ablations, _: ReadKey) -> list[Ablation]:
    return [Ablation(**v) for v in await ablations.list(job_id)]


@router.get("/jobs/{job_id}/ablations/{ablation_id}", response_model=Ablation, tags=["ablations"], responses=ERRORS)
async def get_ablation(job_id: str, ablation_id: AblationId, ablations: Ablations, _: ReadKey) -> Ablation:
    return Ablation(**await ablations.view(job_id, ablation_id))


@router.get("/jobs/{job_id}/ablations/{ablation_id}/plot.png", tags=["ablations"], response_class=FileResponse,
            responses={**ERRORS, 200: {"content": {"image/png": {}}, "description": "bits per byte per arm"}})
async def ablation_plot(job_id: str, ablation_id: AblationId, ablations: Ablations, _: ReadKey) -> FileResponse:
    return FileResponse(await ablations.plot(job_id, ablation_id), media_type="image/png")
