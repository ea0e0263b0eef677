"""Dashboard pages under ``/ui``: login, the jobs list with live progress, a job's
overview (funnel, reasons, shards, provenance, downloads) and a document's lineage.

Each page calls the same ``JobService`` functions as the REST routes, so the numbers a
page shows are the API's. A page without a valid session redirects to the login form.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from filters.base import Stage
from filters.registry import get_stage
from service.dashboard.sessions import COOKIE, Session
from service.errors import ServiceError
from workers.compare_jobs import compare
from workers.job_folder import JobFolder
from workers.score_histograms import histograms
from workers.spec import JobSpec

router = APIRouter(prefix="/ui", include_in_schema=False)
MAX_JOBS = 500  # the newest jobs the jobs page and the compare form list
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:,.4g}" if isinstance(value, float) else str(value)


def _bytes(value: int | None) -> str:
    if value is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return str(value)


templates.env.filters["num"] = _number
templates.env.filters["bytes"] = _bytes
templates.env.filters["pct"] = lambda part, whole: f"{100 * part / whole:.1f}%" if whole else "–"


class LoginRequired(Exception):
    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


def _session(request: Request) -> tuple[Session, str]:
    """The page's session and its key's role; a missing, expired or revoked one → login."""
    session = request.app.state.sessions.get(request.cookies.get(COOKIE))
    role = request.app.state.keys.role_of(session.key) if session else None
    if session is None or role is None:
        raise LoginRequired(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
    return session, role


def _render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    session = request.app.state.sessions.get(request.cookies.get(COOKIE))
    role = request.app.state.keys.role_of(session.key) if session else None
    return templates.TemplateResponse(request, template, {"role": role, "csrf": session.csrf if session else "",
                                                          **context}, status_code=status)


def login_redirect(request: Request, exc: LoginRequired) -> Response:
    return RedirectResponse(f"/ui/login?next={quote(exc.next_url)}", status_code=303)


def _safe_next(value: str | None) -> str:
    # Only paths of this dashboard: never an open redirect to another site.
    return value if value and value.startswith("/ui/") and not value.startswith("//") else "/ui/jobs"


@router.get("", response_class=HTMLResponse)
@router.get("/", response_class=HTMLResponse)
async def home() -> Response:
    return RedirectResponse("/ui/jobs", status_code=303)


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    return _render(request, "login.html", next=_safe_next(next), error=None)


def _same_origin(request: Request) -> None:
    """Forms of these pages post only from these pages: a cross-site post (login CSRF, a
    forced logout) is refused, whatever cookies it carries."""
    site = request.headers.get("sec-fetch-site")
    origin = request.headers.get("origin")
    if site not in (None, "same-origin", "none") or (origin and origin != f"{request.url.scheme}://{request.url.netloc}"):
        raise ServiceError(403, "this form only accepts posts from the dashboard's own pages")


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    _same_origin(request)
    # A urlencoded form, parsed here (no python-multipart dependency for one field).
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    key = (form.get("key") or [""])[0].strip()
    target = _safe_next((form.get("next") or [None])[0])
    if not key or request.app.state.keys.role_of(key) is None:
        return _render(request, "login.html", status=401, next=target, error="That API key is not valid.")
    request.app.state.sessions.close(request.cookies.get(COOKIE))  # a login never keeps an old session id
    sid, _ = request.app.state.sessions.open(key)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, sid, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https", max_age=int(request.app.state.sessions.ttl))
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    _same_origin(request)
    request.app.state.sessions.close(request.cookies.get(COOKIE))
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/jobs", response_class=HTMLResponse)
async def jobs_page(request: Request) -> HTMLResponse:
    _session(request)
    jobs = await request.app.state.jobs.recent(MAX_JOBS)
    durations = await asyncio.to_thread(lambda: {j["job_id"]: _duration(j["output"]) for j in jobs})
    return _render(request, "jobs.html", jobs=jobs, durations=durations)


def _duration(output: str) -> str | None:
    """How long the run took (to now, while it runs): job.json's start to the manifest's end."""
    folder = JobFolder(output)
    try:
        started = datetime.fromisoformat(folder.job()["created_at"])
        ended = datetime.fromisoformat(json.loads(folder.manifest.read_text())["completed_at"]) \
            if folder.complete() else datetime.now(started.tzinfo)
    except (OSError, KeyError, ValueError):
        return None
    seconds = int((ended - started).total_seconds())
    return f"{seconds // 3600}h {seconds // 60 % 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@router.get("/jobs.json")
async def jobs_json(request: Request) -> dict:
    """What the jobs page polls for live progress: the jobs it lists, newest first."""
    _session(request)
    return {"items": await request.app.state.jobs.recent(MAX_JOBS)}


@router.post("/jobs", response_class=HTMLResponse)
async def launch(request: Request) -> Response:
    """The jobs page's launch form: a YAML or JSON spec, validated like ``POST /jobs``
    (errors name the field path), then submitted. Admin keys only."""
    session, role = _session(request)
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    text = (form.get("spec") or [""])[0]
    _same_origin(request)
    if not secrets.compare_digest((form.get("csrf") or [""])[0], session.csrf):
        raise ServiceError(403, "the form's session token does not match: reload the page and try again")
    if role != "admin":
        raise ServiceError(403, "this API key is read-only; launching a job needs an admin key")
    errors: list[str] = []
    try:
        data = yaml.safe_load(text)  # JSON is YAML too
        spec = JobSpec.model_validate(data)
    except yaml.YAMLError as exc:
        errors = [f"not YAML or JSON: {exc}"]
    except ValidationError as exc:
        errors = [f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors()]
    if not errors:
        try:
            view, _ = await request.app.state.jobs.submit(spec, None)
        except ServiceError as exc:
            errors = [exc.message]
        else:
            return RedirectResponse(f"/ui/jobs/{view['job_id']}", status_code=303)
    return _render(request, "jobs.html", status=422, jobs=await request.app.state.jobs.recent(MAX_JOBS),
                   durations={}, spec_text=text, errors=errors)


@router.get("/compare", response_class=HTMLResponse)
async def compare_page(request: Request, a: str | None = None, b: str | None = None) -> HTMLResponse:
    """Two jobs side by side: their funnels, and which documents one kept and the other dropped."""
    _session(request)
    service = request.app.state.jobs
    context: dict[str, Any] = {"jobs": await service.recent(MAX_JOBS), "a": a, "b": b, "diff": None}
    if a and b:
        job_a, job_b = await service.view(a), await service.view(b)
        for job in (job_a, job_b):
            if job["state"] not in ("succeeded", "failed", "cancelled"):
                raise ServiceError(409, f"job {job['job_id']} is {job['state']}: compare finished jobs")
            if not JobFolder(job["output"]).started():
                raise ServiceError(409, f"job {job['job_id']} never started: it has no lineage to compare")
        stats_a, stats_b = await service.stats(a), await service.stats(b)
        diff = await asyncio.to_thread(compare, job_a["output"], job_b["output"])
        context.update(job_a=job_a, job_b=job_b, stats_a=stats_a, stats_b=stats_b, diff=diff)
    return _render(request, "compare.html", **context)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(request: Request, job_id: str) -> HTMLResponse:
    _session(request)
    service = request.app.state.jobs
    job = await service.view(job_id)
    stats = manifest = None
    try:
        stats = await service.stats(job_id)
    except ServiceError as exc:  # not started yet: the page says so
        if exc.status != 409:
            raise
    if job["state"] == "succeeded":
        manifest = await service.manifest(job_id)
    examples: dict[tuple[int, str], list[str]] = {}
    if stats is not None:
        for ex in await service.reason_examples(job_id):
            examples.setdefault((ex["stage_index"], ex["reason"]), []).append(ex["doc_id"])
    return _render(request, "job.html", job=job, stats=stats, manifest=manifest, examples=examples,
                   shards=_shard_rows(stats, manifest), record=_record(job["output"]))


def _record(output: str) -> dict | None:
    """Provenance from the job folder: spec (as YAML), spec hash, code version, model hashes."""
    folder = JobFolder(output)
    if not folder.started():
        return None
    job = folder.job()
    return {"spec_hash": job.get("spec_hash"), "code_version": job.get("code_version"),
            "model_hashes": job.get("model_hashes") or {},
            "spec_yaml": yaml.safe_dump(job.get("spec"), sort_keys=False, allow_unicode=True)}


def _shard_rows(stats: dict | None, manifest: dict | None) -> list[dict]:
    """Per input shard: rows in (first stage), rows out and the output file's facts."""
    if not stats or not stats["stages"]:
        return []
    first, last = stats["stages"][0], stats["stages"][-1]
    rows: dict[str, dict] = {}
    for unit in first["units"]:
        row = rows.setdefault(unit["shard"], {"shard": unit["shard"], "rows_in": 0, "seconds": 0.0})
        row["rows_in"] += unit["docs_in"]
    for stage in stats["stages"]:
        for unit in stage["units"]:
            rows[unit["shard"]]["seconds"] += unit["score_seconds"] or 0.0
    for unit in last["units"]:
        row = rows[unit["shard"]]
        row["rows_out"] = row.get("rows_out", 0) + unit["kept"] + unit["created"]
    files = {f["source"]: f for f in (manifest or {}).get("files", [])}
    for shard, row in rows.items():
        row["file"] = files.get(shard)
    return list(rows.values())


@router.get("/jobs/{job_id}/stages/{index}", response_class=HTMLResponse)
async def stage_page(request: Request, job_id: str, index: int, shard: int | None = None,
                     reason: str | None = None) -> HTMLResponse:
    """One stage: histograms of its scores (the job or one shard) with the current cuts, a
    what-if form over its select params, and kept vs dropped samples."""
    _session(request)
    service = request.app.state.jobs
    job = await service.view(job_id)
    folder = JobFolder(job["output"])
    if not folder.started():
        raise ServiceError(409, f"job {job_id} has not started yet", code="job_not_started")
    stages = folder.stages()
    if not 0 <= index < len(stages):
        raise ServiceError(404, f"job {job_id} has no stage {index}")
    record = stages[index]
    cls = get_stage(record["name"])
    stage = cls(cls.Params.model_validate(record["params"]))
    charts = await asyncio.to_thread(histograms, job["output"], index, shard=shard)
    cuts = stage.thresholds()
    stats = await service.stats(job_id)
    row = stats["stages"][index]
    reasons = list(row["reasons"])
    chosen = reason if reason in reasons else (reasons[0] if reasons else None)
    kept = await service.samples(job_id, stage=record["name"], decision="keep", reason=None, limit=8)
    dropped = await service.samples(job_id, stage=record["name"], decision="drop", reason=chosen, limit=8) \
        if chosen else {"items": []}
    inputs = [sh["path"] for sh in folder.job().get("inputs", [])]
    return _render(request, "stage.html", job=job, record=record, index=index, kind=cls.kind, row=row,
                   charts=[{**c, "cuts": [v for v in cuts.get(c["score"], []) if c["lo"] <= v <= c["hi"]],
                            "all_cuts": cuts.get(c["score"], [])} for c in charts],
                   knobs=_knobs(cls, record["params"]), spec=folder.job().get("spec"), shards=inputs, shard=shard,
                   reasons=reasons, chosen=chosen, kept=kept["items"], dropped=dropped["items"])


def _knobs(cls: type[Stage], params: dict) -> list[dict]:
    """The numeric select params a what-if form offers (path, value), one level of nesting
    included (e.g. ``select.max``); scoring, fit and execution params are left out (a
    preview refuses them)."""
    skip = cls.score_params | cls.fit_params | cls.Params.execution_fields
    knobs = []
    for name, value in params.items():
        if name in skip:
            continue
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            knobs.append({"path": name, "value": value, "integer": isinstance(value, int)})
        elif isinstance(value, dict):
            knobs += [{"path": f"{name}.{k}", "value": v, "integer": isinstance(v, int)}
                      for k, v in value.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    return knobs


@router.get("/jobs/{job_id}/documents/{doc_id:path}", response_class=HTMLResponse)
async def document_page(request: Request, job_id: str, doc_id: str) -> HTMLResponse:
    _session(request)
    service = request.app.state.jobs
    job = await service.view(job_id)
    lineage = await service.document(job_id, doc_id)
    clusters = {s["stage"]: await service.cluster(job_id, s["stage"], s["cluster_id"])
                for s in lineage["stages"] if s.get("cluster_id")}
    text = None
    if lineage["stages"]:  # the text it had when it entered the job (or was created)
        first = {**lineage["stages"][0], "doc_id": doc_id}
        spec = JobSpec.model_validate(JobFolder(job["output"]).job()["spec"])
        text = (await asyncio.to_thread(JobFolder(job["output"]).texts, [first], spec.columns.text))[0]
    return _render(request, "document.html", job=job, doc=lineage, clusters=clusters, text=text)


def install(app) -> None:
    """A page without a session goes to the login form; a service error on a page (an
    unknown job or document) is an HTML page with the same status, not a JSON body."""
    api_handler = app.exception_handlers[ServiceError]

    async def service_error(request: Request, exc: ServiceError) -> Response:
        if not request.url.path.startswith("/ui/"):
            return await api_handler(request, exc)
        return _render(request, "error.html", status=exc.status, message=str(exc))

    async def login_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        return login_redirect(request, exc)

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(LoginRequired, login_required)
