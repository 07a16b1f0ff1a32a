"""One batch line as a job, and a finished job as the line of the output or error file.

A line's body is checked exactly as its endpoint checks a direct request (the same schema, the same
404 for an unknown model, the same 400 envelope), then becomes a job on its model's queue in the
``batch`` class, behind interactive and background work. A batch line waits for a worker (its
batch's window is its deadline) where a direct request would answer 503 at once. The output line's
body is what the endpoint would have returned (``api/responses.py``, as ``GET /v1/jobs/{id}``).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from pydantic import ValidationError

from tasks.contract.errors import JobError, server_error
from tasks.contract.payloads import TASK_EMBED, TASK_GENERATE, EmbedJob, EmbedResult, GenerateJob, GenerateResult
from tasks.queue.client import new_job_id
from tasks.queue.events import parse_result

from .. import responses
from ..errors import body_validation_error
from ..schemas.common import BACKGROUND
from ..schemas.embeddings import EmbeddingRequest
from ..schemas.jobs import BODIES

if TYPE_CHECKING:
    from ..gateway import Gateway

OK, ERROR = "1", "0"  # the first character of a stored result: which file the line goes to


@dataclass(frozen=True)
class LineKind:
    task: str
    kind: str  # what ensure_served checks: chat | embedding
    prefix: str  # of the job id, as the direct endpoint's response ids


KINDS: dict[str, LineKind] = {
    "/v1/chat/completions": LineKind(TASK_GENERATE, "chat", "chatcmpl"),
    "/v1/completions": LineKind(TASK_GENERATE, "chat", "cmpl"),
    "/v1/embeddings": LineKind(TASK_EMBED, "embedding", "emb"),
}
ENDPOINTS = tuple(KINDS)


@dataclass
class LineJob:
    endpoint: str
    task: str
    job: GenerateJob | EmbedJob
    meta: dict[str, Any] = field(default_factory=dict)


def new_request_id() -> str:
    return uuid.uuid4().hex


def parse_line(text: str) -> tuple[str, dict[str, Any]]:
    """(custom_id, body) of a line that passed validation."""
    obj = json.loads(text)
    return obj["custom_id"], obj["body"]


class LineJobs:
    def __init__(self, gw: "Gateway") -> None:
        self.gw = gw

    async def prepare(self, endpoint: str, custom_id: str, body: dict[str, Any], deadline: float,
                      request_id: str) -> LineJob:
        """The line's job, checked as a direct request; its refusal raised as that request's JobError."""
        kind = KINDS[endpoint]
        try:
            req = BODIES[endpoint].model_validate(body, context={BACKGROUND: True})
        except ValidationError as e:
            raise body_validation_error(e) from None
        job = req.to_job(new_job_id(kind.prefix), deadline, request_id)
        try:
            await self.gw.ensure_served(job.model, kind.kind)
        except JobError as e:
            if e.code != "model_not_served":  # no worker yet: the line waits for one
                raise
        job.klass = "batch"
        meta: dict[str, Any] = {"custom_id": custom_id, "request_id": request_id}
        if isinstance(req, EmbeddingRequest):
            meta["encoding_format"] = req.encoding_format
        return LineJob(endpoint, kind.task, job, meta)

    async def send(self, line: LineJob, ttl: int) -> None:
        await self.gw.jobs.submit(line.task, line.job, endpoint=line.endpoint, meta=line.meta, watch=False, ttl=ttl)

    def count(self, rec: dict[str, Any]) -> None:
        """A recorded line's tokens in this process's counters, as a request's (the status page's chart)."""
        if rec["status"] != "succeeded" or rec.get("task") not in (TASK_GENERATE, TASK_EMBED):
            return
        try:
            result = parse_result(rec["task"], rec.get("result"))
        except ValidationError:
            return
        if isinstance(result, (GenerateResult, EmbedResult)):
            usage = result.usage()
            self.gw.metrics.prompt_tokens.labels(rec["model"]).inc(usage.prompt)
            if isinstance(result, GenerateResult):
                self.gw.metrics.generation_tokens.labels(rec["model"]).inc(usage.completion)


def _line(custom_id: str, response: Optional[dict[str, Any]], error: Optional[dict[str, Any]]) -> str:
    return json.dumps({"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id, "response": response,
                       "error": error}, separators=(",", ":"))


def refused(custom_id: str, request_id: str, err: JobError) -> str:
    """A request the endpoint answered with an error: its status and envelope, for the error file."""
    return ERROR + _line(custom_id, {"status_code": err.status_code, "request_id": request_id,
                                     "body": err.envelope()}, None)


def not_run(custom_id: str, code: str, message: str) -> str:
    """A line the batch never ran (``batch_cancelled``, ``batch_expired``)."""
    return ERROR + _line(custom_id, None, {"code": code, "message": message})


def from_record(job_id: str, rec: dict[str, Any]) -> str:
    """A finished job's record as its stored result line."""
    meta = rec.get("meta") or {}
    custom_id, request_id = meta.get("custom_id", ""), meta.get("request_id", "")
    if rec["status"] != "succeeded":
        return refused(custom_id, request_id, JobError.from_dict(rec.get("error") or {}))
    try:
        body = responses.for_endpoint(rec["endpoint"], job_id, int(rec["created_at"]), rec["model"], meta,
                                      rec.get("result") or {})
    except (ValidationError, KeyError, ValueError):  # versions apart: the line fails, the batch goes on
        return refused(custom_id, request_id, server_error("The worker returned a result the API cannot read."))
    return OK + _line(custom_id, {"status_code": 200, "request_id": request_id, "body": body}, None)


def counter(result: str) -> str:
    """Which of ``request_counts`` a stored result adds to."""
    return "completed" if result.startswith(OK) else "failed"


def stop_reason(rec: dict[str, Any]) -> bool:
    """The job ended because its batch stopped (our cancel, or the window as its deadline), not on
    its own: its line is recorded as not run."""
    return rec["status"] == "cancelled" or (rec.get("error") or {}).get("code") == "request_timeout"
