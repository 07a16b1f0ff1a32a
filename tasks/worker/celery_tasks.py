"""The Celery tasks a worker runs, at module level: each reads its payload and hands it to the
process's :class:`~tasks.worker.runtime.WorkerRuntime` (bound once by :func:`bind`).

``shared_task`` registers them with the app the worker builds (``create_celery``); the front never
imports this module: it sends tasks by name (``tasks.contract.payloads.TASK_*``).
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

from celery import bootsteps, shared_task
from celery.signals import task_received
from celery.worker.control import control_command
from pydantic import ValidationError

from tasks.contract.catalog import resolve
from tasks.contract.errors import JobError
from tasks.contract.logging_setup import job_facts, log_context
from tasks.contract.payloads import (
    TASK_EMBED,
    TASK_GENERATE,
    TASK_INITIALIZE,
    TASK_TOKENIZE,
    EmbedJob,
    GenerateJob,
    InitializeJob,
    JobBase,
    TokenizeJob,
)

if TYPE_CHECKING:
    from tasks.worker.runtime import WorkerRuntime

log = logging.getLogger("llmhost.worker")

_runtime: "WorkerRuntime | None" = None


def bind(runtime: "WorkerRuntime") -> None:
    """The one runtime of this process, which every task delegates to."""
    global _runtime
    _runtime = runtime


def _bound() -> "WorkerRuntime":
    if _runtime is None:
        raise RuntimeError("tasks.worker.celery_tasks.bind(runtime) was not called")
    return _runtime


@contextmanager
def job_logging(job: JobBase, task: str) -> Iterator[None]:
    """Every line logged by this task's thread while it runs carries the job's and request's ids;
    one line per job says how long it took (never what it said), with what the job noted on the
    way (``note_fact``: a generation's ``engine_seconds``, its time in the engine)."""
    started = time.perf_counter()
    with log_context(job_id=job.job_id, request_id=job.request_id), job_facts() as facts:
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            log.info("job %s ended after %.3f s", job.job_id, seconds,
                     extra={**facts, "task": task, "seconds": round(seconds, 3)})


def run(task: str, kind: type[JobBase], payload: dict[str, Any], work: Callable[[Any], None]) -> None:
    runtime = _bound()
    try:
        job = kind.model_validate(payload)
    except ValidationError as e:
        # A payload this worker cannot read (API and worker versions apart): end the job rather
        # than leave it queued, and never log the payload (it holds the prompt).
        log.error("job %s: unreadable %s payload (%d problems)", payload.get("job_id"), task, e.error_count())
        runtime.reject(str(payload.get("job_id", "")), f"The worker could not read this {task} job.")
        return
    with job_logging(job, task), runtime.gate.slot(job.klass):
        work(job)


@task_received.connect
def _received(request: Any = None, **_: Any) -> None:
    """On the consumer's thread, as the message arrives: the job is claimed here, one round trip
    before a pool thread starts it (a free thread waits for it: the worker takes one message per
    thread, except for a while after a broker reconnect, when the pool checks a claim that waited;
    WorkerRuntime._take_claim). From then on, if this worker dies, the reapers deliver the job again."""
    if _runtime is not None and request is not None:
        _runtime.claim(request.id)


class ConsumerHandle(bootsteps.StartStopStep):
    """Hands Celery's consumer to the class gate, which pauses and resumes the class queues."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def start(self, c: Any) -> None:
        _bound().gate.attach(c)


@shared_task(name=TASK_GENERATE, ignore_result=True)
def generate(payload: dict[str, Any]) -> None:
    run(TASK_GENERATE, GenerateJob, payload, _bound().generate)


@shared_task(name=TASK_EMBED, ignore_result=True)
def embed(payload: dict[str, Any]) -> None:
    run(TASK_EMBED, EmbedJob, payload, _bound().embed)


@shared_task(name=TASK_TOKENIZE, ignore_result=True)
def tokenize(payload: dict[str, Any]) -> None:
    run(TASK_TOKENIZE, TokenizeJob, payload, _bound().tokenize)


@shared_task(name=TASK_INITIALIZE, ignore_result=True)
def initialize(payload: dict[str, Any]) -> None:
    run(TASK_INITIALIZE, InitializeJob, payload, _bound().initialize)


@control_command(args=[("model", str)], signature="<model>")
def llmhost_move(state: Any, model: str) -> dict[str, str]:
    """Remote control (the API's `POST /v1/workers/{name}/model`): serve another model."""
    runtime = _bound()
    try:
        target = resolve(runtime.settings.models_dir, model).path
    except JobError as e:
        return {"error": e.message}
    consumer = state.consumer

    def switch(add: list[str], cancel: list[str]) -> None:  # queue changes happen on the consumer's loop
        for q in cancel:
            consumer.call_soon(consumer.cancel_task_queue, q)
        for q in add:
            consumer.call_soon(consumer.add_task_queue, q)

    threading.Thread(target=runtime.move_to, args=(model, target, switch), name="llmhost-move", daemon=True).start()
    return {"ok": f"moving to {model}"}
