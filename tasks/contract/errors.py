"""The one error type that crosses Redis: it carries what the front needs for the OpenAI envelope."""

from __future__ import annotations

import math
from typing import Any

# A worker whose model cannot be loaded exits with this code; the supervisor restarts it.
EXIT_LOAD_FAILED = 3


class JobError(Exception):
    """A request-level failure with an HTTP status and the OpenAI error fields.

    Raised by the worker (bad prompt, context too long, load failure) and by the front (unknown
    model, no worker); serialised into job records and events with :meth:`to_dict`.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 400,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI error object, plus the status so it survives the trip through Redis."""
        return {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
            "status_code": self.status_code,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JobError":
        return cls(
            d.get("message", "unknown error"),
            status_code=int(d.get("status_code", 500)),
            type=d.get("type", "server_error"),
            code=d.get("code"),
            param=d.get("param"),
        )

    def envelope(self) -> dict[str, Any]:
        return {"error": {k: v for k, v in self.to_dict().items() if k != "status_code"}}


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> JobError:
    return JobError(message, status_code=400, type="invalid_request_error", param=param, code=code)


def server_error(message: str, code: str | None = None) -> JobError:
    return JobError(message, status_code=500, type="server_error", code=code)


# Overload: a job is refused at once (429) when its model's queue of its class already holds
# LLMHOST_MAX_QUEUE_DEPTH jobs (checked in the same atomic step that enqueues it, JobStore.create).
# A queue that keeps growing means the workers of that model cannot keep up; answering 429 with a
# ``Retry-After`` lets clients back off instead of waiting in a line that ends in a 504.
MAX_RETRY_AFTER = 5


def retry_after(depth: int, limit: int) -> int:
    """1 s at the limit, one more second per further queue's worth of waiting jobs, at most 5."""
    return max(1, min(MAX_RETRY_AFTER, math.ceil(depth / max(limit, 1))))


def queue_full(model: str, depth: int, limit: int) -> JobError:
    return JobError(
        f"The queue of `{model}` is full ({depth} jobs waiting, limit {limit}, LLMHOST_MAX_QUEUE_DEPTH); retry later.",
        status_code=429, type="rate_limit_error", code="queue_full",
        headers={"Retry-After": str(retry_after(depth, limit))},
    )
