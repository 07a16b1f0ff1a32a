"""One logging format for every process of LLM-Host: JSON lines (default) or plain text.

A JSON line is one object: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``msg``, ``pid``, then
``request_id`` / ``job_id`` when known, the scalar ``extra={...}`` fields of the call, the fields given to
:func:`setup_logging` as ``context``, and ``exc`` with the traceback of ``log.exception``.

Request and job ids come from context variables, so code that logs needs no parameter for them:

* the API's middleware binds ``request_id`` for each request (``api/middleware.py``), and the
  gateway binds ``job_id`` once it has made the job;
* on the worker, ``tasks/worker.py`` runs each Celery task body inside
  ``log_context(job_id=..., request_id=...)`` (the ids travel in the job payload), so every line
  logged by that task's thread carries them;
* code on another thread (the engine thread) passes them per call: ``log.info("...",
  extra={"job_id": seq.job_id})``, or wraps its logger once: ``job_logger(log, job_id, request_id)``.

Prompts and generated text are never logged.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping, Optional

request_id_var: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("llmhost_request_id", default=None)
job_id_var: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("llmhost_job_id", default=None)

# Scalars noted about the job running in this thread (note_fact), for its one closing line (job_facts).
_facts_var: contextvars.ContextVar[Optional[dict[str, Any]]] = contextvars.ContextVar("llmhost_job_facts", default=None)

CONTEXT_FIELDS = ("request_id", "job_id")
_VARS = {"request_id": request_id_var, "job_id": job_id_var}

# Attributes every LogRecord has; anything else on a record came from `extra=`. Extras are emitted
# only when scalar: Celery passes the task's arguments (our prompts) as `extra={"data": {...}}`.
_STANDARD = set(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {"message", "asctime", "taskName"}
_NEVER = {"data", "args", "kwargs", "argsrepr", "kwargsrepr"}
_SCALARS = (str, int, float, bool)


@contextmanager
def log_context(**ids: Optional[str]) -> Iterator[None]:
    """Bind ``request_id`` and/or ``job_id`` for the lines logged inside the block (this thread or task)."""
    tokens = [(_VARS[k], _VARS[k].set(v)) for k, v in ids.items() if k in _VARS]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


@contextmanager
def job_facts() -> Iterator[dict[str, Any]]:
    """Collect what code inside the block notes with :func:`note_fact`, for one line at its end
    (the worker's "job … ended" line: tasks/worker/celery_tasks.py)."""
    facts: dict[str, Any] = {}
    token = _facts_var.set(facts)
    try:
        yield facts
    finally:
        _facts_var.reset(token)


def note_fact(**facts: Any) -> None:
    """Note scalars for the enclosing :func:`job_facts` block's line; outside one, nothing happens.
    A name a log record already has (``msg``, ``name``, …) is dropped: as an ``extra`` it would
    make logging raise."""
    collected = _facts_var.get()
    if collected is not None:
        collected.update({k: v for k, v in facts.items() if k not in _STANDARD})


def bind(**ids: Optional[str]) -> None:
    """Bind ids for the rest of the current task (an API request runs in its own task)."""
    for k, v in ids.items():
        if k in _VARS:
            _VARS[k].set(v)


def job_logger(logger: logging.Logger, job_id: Optional[str], request_id: Optional[str] = None) -> logging.LoggerAdapter:
    """A logger whose lines carry these ids, for code that is not inside :func:`log_context`."""
    return logging.LoggerAdapter(logger, {"job_id": job_id, "request_id": request_id})


class ContextFilter(logging.Filter):
    """Puts the bound ids (and the process's static context) on each record, unless the call set them."""

    def __init__(self, static: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _VARS.items():
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        for k, v in self.static.items():
            if not hasattr(record, k):
                setattr(record, k, v)
        return True


def _ts(created: float) -> str:
    return datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": _ts(record.created), "level": record.levelname, "logger": record.name,
                               "msg": record.getMessage(), "pid": record.process}
        for name in CONTEXT_FIELDS:
            if (value := getattr(record, name, None)) is not None:
                out[name] = value
        for k, v in vars(record).items():
            if k not in _STANDARD and k not in _NEVER and k not in out and isinstance(v, _SCALARS):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(f"{k}={getattr(record, k)}" for k in CONTEXT_FIELDS if getattr(record, k, None))
        if not ids:
            return line
        head, sep, tail = line.partition("\n")  # ids on the first line, before a traceback
        return f"{head} {ids}{sep}{tail}"


def setup_logging(level: str = "INFO", fmt: str = "json", context: Optional[Mapping[str, Any]] = None) -> None:
    """Route every logger (uvicorn's and Celery's included) to one stderr handler in ``fmt``.

    ``context``: fields added to every line of this process (e.g. ``{"worker": name, "model": id}``).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter(context))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # `warnings` go through the same handler (logger py.warnings)
    # uvicorn installs its own handlers before the app factory runs: send its lines through ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
