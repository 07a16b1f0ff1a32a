"""Pure ASGI layers of every request.

:class:`RequestContextMiddleware`, the outermost: the request's id, its logging context, its
metrics, one access line. :class:`BodyLimitMiddleware`, the innermost: 413 for large bodies.

``X-Request-ID`` is taken from the request when it is a sane token (``[A-Za-z0-9._-]``, at most
64 characters), else generated; it is on every response (streams included), bound for the log
lines of the request, and carried in the payload of the jobs the request makes.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from typing import Any, Optional

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tasks.contract.errors import JobError
from tasks.contract.logging_setup import bind

from .errors import error_response
from .metrics import Metrics

access_log = logging.getLogger("llmhost.access")

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_started: contextvars.ContextVar[Optional[float]] = contextvars.ContextVar("llmhost_request_started", default=None)
UNMATCHED = "<unmatched>"


def sane_request_id(value: Optional[str]) -> Optional[str]:
    """The client's id when it is safe to echo and log, else None."""
    return value if value is not None and _SANE_ID.fullmatch(value) else None


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_started() -> Optional[float]:
    """``time.perf_counter()`` when the current request arrived (None outside a request)."""
    return _started.get()


def route_template(scope: Scope) -> str:
    """The route's path template (``/v1/jobs/{job_id}``), never the raw path: bounded label values."""
    route = scope.get("route")
    if route is not None and getattr(route, "path", None):
        return route.path
    app = scope.get("app")
    for candidate in getattr(app, "routes", ()):  # not routed yet (refused by an outer layer)
        try:
            match, _ = candidate.matches(scope)
        except Exception:  # noqa: BLE001 - a route that cannot judge this scope
            continue
        if match != Match.NONE and getattr(candidate, "path", None):
            return candidate.path
    return UNMATCHED


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"x-request-id"), None)
        rid = sane_request_id(incoming) or new_request_id()
        scope.setdefault("state", {})["request_id"] = rid
        # Each request runs in its own task: these stay bound for all of its log lines (the
        # server-error handler outside this layer included) and are copied into its stream tasks.
        bind(request_id=rid, job_id=None)
        started = time.perf_counter()
        _started.set(started)
        status = 500  # if the app raises before answering, the server-error layer answers 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route, method = route_template(scope), scope.get("method", "")
            if self.metrics is not None:
                self.metrics.observe_request(route, method, status, seconds)
            access_log.info("%s %s %d %.1f ms", method, scope.get("path", ""), status, seconds * 1000,
                            extra=_access_fields(method, route, scope.get("path", ""), status, seconds))


def _access_fields(method: str, route: str, path: str, status: int, seconds: float) -> dict[str, Any]:
    return {"method": method, "route": route, "path": path, "status": status, "duration_ms": round(seconds * 1000, 1)}


class BodyTooLarge(StarletteHTTPException):
    code = "request_too_large"

    def __init__(self, message: str) -> None:
        super().__init__(413, message)


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``: at once from ``Content-Length``, or as soon as a chunked
    body grows past it (the error is raised from ``receive`` and answered by the JobError handler).

    Pure ASGI on purpose: a ``BaseHTTPMiddleware`` runs the app in another task, so context the
    route binds (the job id of the log lines) would not reach the layers outside it."""

    def __init__(self, app: ASGIApp, max_bytes: int, uploads: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.uploads = uploads or {}  # POST path → its own limit (file uploads are not requests)

    @staticmethod
    def _too_large(limit: int) -> JobError:
        return JobError(f"Request body larger than {limit} bytes.", status_code=413, code="request_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.uploads.get(scope.get("path", ""), self.max_bytes) if scope.get("method") == "POST" \
            else self.max_bytes
        length = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), b"")
        if length.isdigit() and int(length) > limit:
            await error_response(self._too_large(limit), scope.get("path", ""))(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # An HTTPException, because FastAPI turns anything else raised while it reads
                    # the body into a 400; its handler (api/errors.py) keeps the code.
                    raise BodyTooLarge(self._too_large(limit).message)
            return message

        await self.app(scope, counted, send)
