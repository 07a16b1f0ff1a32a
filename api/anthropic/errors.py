"""Anthropic's error envelope, for every error answered on ``/v1/messages*`` (the SDK raises its
typed exceptions from the status and reads ``error.type``).

No worker for the model answers 503 with ``overloaded_error``, not Anthropic's own 529: the status
stays the one the OpenAI routes answer (and that proxies, load balancers and retry policies know,
with its ``Retry-After``), while the type says what Anthropic clients expect of a capacity problem
that passes. The SDK raises ``ServiceUnavailableError`` for it, an ``InternalServerError`` as its
``OverloadedError`` is, and retries it the same way.
"""

from __future__ import annotations

from typing import Any

from tasks.contract.errors import JobError

PREFIX = "/v1/messages"

_TYPES = {
    401: "authentication_error", 403: "permission_error", 404: "not_found_error", 413: "request_too_large",
    429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error", 504: "timeout_error",
}


def is_anthropic_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def error_type(status: int) -> str:
    return _TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")


def envelope(err: JobError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(err.status_code), "message": err.message}}
