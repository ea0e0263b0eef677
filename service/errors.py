"""One error body for every failure: ``{"error": {"code", "message", "details"}}``.

Every response carries an ``X-Request-ID`` (the client's, or a new one). An unexpected
error is logged with that id and its traceback; its body says only that it happened and
gives the id, never the exception's text (which can hold paths, queries or data).
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("curate.api")

CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
         409: "conflict", 413: "request_too_large", 422: "invalid_request", 429: "rate_limited",
         500: "internal_error",
         503: "unavailable"}


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    error: ErrorDetail


_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class ServiceError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, details: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.code = code or CODES.get(status, "error")
        self.details = details
        self.headers = headers


def error_response(status: int, code: str, message: str, details: Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(code=code, message=message, details=details))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"].removeprefix("Value error, ")}
                   for e in exc.errors()]
        message = "; ".join(f"{d['loc']}: {d['msg']}" for d in details[:5])
        return error_response(422, "invalid_request", message, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, CODES.get(exc.status_code, "error"), str(exc.detail),
                              headers=getattr(exc, "headers", None))



def internal_error(request_id: str) -> JSONResponse:
    return error_response(500, "internal_error", f"internal error; the server log has it under request id "
                          f"{request_id}", {"request_id": request_id})


class RequestId:
    """ASGI middleware: take the client's X-Request-ID (if it is a plain token) or make
    one, echo it on the response, and turn an unexpected exception into the 500 body
    (logged with the id and its traceback; the body never carries the exception text)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _SAFE_ID.match(given) else secrets.token_hex(8)
        started = False

        async def with_id(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, with_id)
        except Exception:
            log.exception("request %s: unhandled error on %s %s", request_id, scope.get("method"), scope.get("path"))
            if started:  # too late for an error body; the connection is closed on the client
                raise
            await internal_error(request_id)(scope, receive, with_id)


class BodySizeLimit:
    """ASGI middleware: 413 for bodies over the limit, declared or streamed."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._reject(scope, receive, send)

    async def _reject(self, scope, receive, send):
        response = error_response(413, "request_too_large", f"request body exceeds {self.max_bytes} bytes")
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass
