"""The FastAPI application: lifespan (Ray head, catalog, poller), auth, error shape."""

from __future__ import annotations

import gc
import logging
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import errors
from service.ablations import AblationService
from service.auth import KeyStore
from service.dashboard import pages as dashboard
from service.dashboard.sessions import SessionStore
from service.job_store import Database
from service.jobs import JobService
from service.rate_limit import RateLimiter
from service.ray_head import LOOPBACK_ENV, LocalRayHead
from service.ray_jobs import RayJobs
from service.routes import router
from service.settings import Settings

log = logging.getLogger("curate.api")


class StartupFailed(RuntimeError):
    """Why the service could not start, as one line (``curate serve`` prints it alone)."""

DESCRIPTION = """Launch curation jobs on Ray, watch them, and ask why each document was kept or dropped.

Every `/jobs` route needs `Authorization: Bearer <key>`; `curate keys create --role admin|read`
makes keys, and the first start prints an admin key. Every error has the body
`{"error": {"code", "message", "details"}}`."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        os.environ.update(LOOPBACK_ENV)
        head, db, service = None, None, None
        try:
            settings.home.mkdir(parents=True, exist_ok=True)
            settings.outputs.mkdir(parents=True, exist_ok=True)
            keys = KeyStore(settings.keys_path)
            first_key = keys.ensure_admin()
            if first_key:
                print(f"curate: no API keys yet; created an admin key (shown once, store it now):\n  {first_key}",
                      flush=True)
            # The catalog first: a locked one fails in a second, before a Ray head is started.
            db = Database(settings.catalog_path, [settings.outputs])
            if db.rebuilt:
                print(f"curate: {db.rebuilt}", flush=True)
            jobs_url = settings.jobs_url()
            if jobs_url is None:
                head = LocalRayHead()
                log.info("starting a local Ray head (RAY_ADDRESS unset)")
                head.start()
                jobs_url = head.jobs_url
            service = JobService(settings, db, RayJobs(jobs_url, settings.python(), settings.home.resolve() / "specs"))
            await service.start()
        except Exception as exc:
            if service is not None:
                await service.stop()
            if db is not None:
                db.close()
            if head is not None:
                head.stop()
            raise StartupFailed(str(exc) or type(exc).__name__) from exc
        try:
            app.state.jobs, app.state.keys, app.state.settings = service, keys, settings
            app.state.sessions = SessionStore()
            app.state.ablations = AblationService(service)
            # The ~150,000 objects of the imports (Ray, pyarrow, FastAPI) never die: out of
            # the collector's sight, a full collection no longer stalls every request for
            # 100-250 ms under load (p99 of GET /jobs/{id} 650 -> 34 ms, bench/RESULTS.md).
            gc.collect()
            gc.freeze()
            yield
        finally:
            await service.stop()
            db.close()
            if head is not None:
                head.stop()

    app = FastAPI(title="curate", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                  generate_unique_id_function=lambda route: route.name,  # operation ids: the routes' names
                  responses={401: {"model": errors.ErrorBody}, 422: {"model": errors.ErrorBody}})
    app.state.limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
    errors.install(app)
    dashboard.install(app)
    app.add_middleware(errors.BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(errors.RequestId)
    app.include_router(router)
    app.include_router(dashboard.router)
    return app
