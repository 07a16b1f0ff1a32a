"""The one error type that crosses Redis: it carries what the front needs for the OpenAI envelope."""

from __future__ import annotations

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
