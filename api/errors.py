"""Every error the front returns, registered in one place: in the OpenAI envelope, or in Anthropic's
on the Anthropic routes (``/v1/messages*``), chosen by the request's path."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tasks.contract.errors import JobError

from .anthropic import errors as anthropic

log = logging.getLogger("llmhost.api")

_STATUS_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
    501: "not_implemented", 503: "service_unavailable",
}


def error_response(err: JobError, path: str = "") -> JSONResponse:
    body = anthropic.envelope(err) if anthropic.is_anthropic_path(path) else err.envelope()
    return JSONResponse(body, status_code=err.status_code, headers=err.headers or None)


def _param(parts: tuple) -> str:
    """A pydantic ``loc`` as the request spells it: ``messages[0].content``."""
    out = ""
    for p in map(str, parts):
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out


def _loc_to_param(loc: tuple) -> str:
    """FastAPI's ``loc`` (``("body", ...)``) without its leading location: only that one, since a
    field may itself be called ``body`` (``POST /v1/jobs``)."""
    return _param(loc[1:] if loc and loc[0] in ("body", "query", "path") else loc)


def from_validation_error(exc: ValidationError, prefix: str = "") -> JobError:
    """A pydantic error raised outside FastAPI's own validation (a body parsed in two steps) → 400."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    param = _param(tuple(first.get("loc", ())))
    param = f"{prefix}.{param}" if prefix and param else (prefix or param)
    text = str(first.get("msg", "invalid request"))
    msg = f"{param}: {text}" if param else text
    return JobError(msg, status_code=400, param=param or None, code="invalid_value")


def request_validation_error(errors: Sequence[Any]) -> JobError:
    """FastAPI's validation errors of a request (``loc`` starting with its location) → the 400."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    param: str | None = _loc_to_param(tuple(first.get("loc", ())))
    msg = str(first.get("msg", "invalid request"))
    if first.get("type") == "json_invalid":
        msg, param = "The request body is not valid JSON.", None
    elif param:
        msg = f"{param}: {msg}"
    if len(errors) > 1:
        msg += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return JobError(msg, status_code=400, param=param or None, code="invalid_value")


def body_validation_error(exc: ValidationError) -> JobError:
    """A body checked outside FastAPI (a batch line's) answered exactly as FastAPI's check of the
    same body would have been."""
    return request_validation_error([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()])


def register_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(JobError)
    async def _job_error(request: Request, exc: JobError) -> JSONResponse:
        return error_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request_validation_error(exc.errors()), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = _STATUS_TYPES.get(exc.status_code, "invalid_request_error" if exc.status_code < 500 else "server_error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return error_response(JobError(message, status_code=exc.status_code, type=kind, code=getattr(exc, "code", None),
                                       headers=dict(exc.headers or {}) or None), request.url.path)

    @app.exception_handler(redis.RedisError)
    async def _redis(request: Request, exc: redis.RedisError) -> JSONResponse:
        log.warning("redis unavailable: %s", exc)
        return error_response(JobError("The job queue (Redis) is unavailable; try again shortly.", status_code=503,
                                       type="service_unavailable", code="queue_unavailable",
                                       headers={"Retry-After": "2"}), request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Answered by the server-error layer, outside the request-id middleware: add the id here.
        log.exception("unhandled error")
        rid = getattr(request.state, "request_id", None)
        return error_response(JobError(f"Internal server error: {type(exc).__name__}", status_code=500, type="server_error",
                                       headers={"X-Request-ID": rid} if rid else None), request.url.path)
