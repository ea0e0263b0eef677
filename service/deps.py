"""Route dependencies as ``Annotated`` aliases: the job service and the API-key checks."""

from __future__ import annotations

import math
import secrets
from typing import Annotated, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service import errors
from service.ablations import AblationService
from service.dashboard.sessions import COOKIE, CSRF_HEADER
from service.jobs import JobService

_bearer = HTTPBearer(auto_error=False, description="an API key from `curate keys create`")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="curate"'}


def _session_key(request: Request) -> str | None:
    """The API key behind the dashboard's session cookie. A state-changing request made
    with the cookie must also carry the session's CSRF token (the pages' scripts send it)."""
    session = request.app.state.sessions.get(request.cookies.get(COOKIE))
    if session is None:
        return None
    if request.method not in ("GET", "HEAD") and not secrets.compare_digest(request.headers.get(CSRF_HEADER, ""),
                                                                            session.csrf):
        raise errors.ServiceError(403, f"a request with the dashboard's session cookie needs its {CSRF_HEADER} header")
    return session.key


def _require(role: Literal["admin", "read"]):
    # async: a plain ``def`` dependency costs every request a hop through the threadpool.
    async def check(request: Request,
              creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
        key = creds.credentials if creds is not None and creds.credentials else _session_key(request)
        if not key:
            raise errors.ServiceError(401, "missing API key: send Authorization: Bearer <key>", headers=_CHALLENGE)
        granted = request.app.state.keys.role_of(key)
        if granted is None:
            raise errors.ServiceError(401, "invalid API key", headers=_CHALLENGE)
        if role == "admin" and granted != "admin":
            raise errors.ServiceError(403, "this API key is read-only; this route needs an admin key")
        wait = request.app.state.limiter.wait(key)
        if wait:
            seconds = math.ceil(wait)
            raise errors.ServiceError(429, f"this API key made more than {request.app.state.limiter.rate:g} requests "
                                           f"per second; retry in {seconds} s", headers={"Retry-After": str(seconds)})
        return granted

    return check


async def get_jobs(request: Request) -> JobService:
    return request.app.state.jobs


async def get_ablations(request: Request) -> AblationService:
    return request.app.state.ablations


Jobs = Annotated[JobService, Depends(get_jobs)]
Ablations = Annotated[AblationService, Depends(get_ablations)]
ReadKey = Annotated[str, Depends(_require("read"))]
AdminKey = Annotated[str, Depends(_require("admin"))]
