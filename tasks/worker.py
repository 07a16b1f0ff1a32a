"""A worker process: ``python -m tasks.worker --model VENDOR/MODEL``.

Loads the one model first (announcing ``loading``), then consumes only that model's queue, one job
at a time. A model that fails to load is announced as ``failed`` and the process exits non-zero,
so the supervisor (``make run``) or the container runtime restarts it.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from celery.worker.control import control_command
from pydantic import ValidationError

from .catalog import resolve
from .celery_app import create_celery
from .errors import EXIT_LOAD_FAILED, JobError
from .logging_setup import log_context, setup_logging
from .payloads import (TASK_EMBED, TASK_GENERATE, TASK_INITIALIZE, TASK_TOKENIZE, EmbedJob, GenerateJob,
                       InitializeJob, JobBase, TokenizeJob)
from .presence import queue_name
from .settings import get_settings

log = logging.getLogger("llmhost.worker")



@contextmanager
def job_logging(job: JobBase, task: str) -> Iterator[None]:
    """Every line logged by this task's thread while it runs carries the job's and request's ids;
    one line per job says how long it took (never what it said)."""
    started = time.perf_counter()
    with log_context(job_id=job.job_id, request_id=job.request_id):
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            log.info("job %s ended after %.3f s", job.job_id, seconds, extra={"task": task, "seconds": round(seconds, 3)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("LLMHOST_MODEL"), help="model id: folder under LLM/")
    args = parser.parse_args(argv)
    if not args.model:
        parser.error("--model (or LLMHOST_MODEL) is required")

    settings = get_settings()
    setup_logging(settings.log_level, settings.log_format, context={"service": "worker", "model": args.model})
    try:
        folder = resolve(settings.models_dir, args.model).path
    except JobError as e:
        log.error("%s (models dir: %s)", e.message, settings.models_dir)
        return 2

    if settings.log_format == "json":  # stderr holds JSON lines only: no progress bars, no banner
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from .runtime import WorkerRuntime  # torch comes in here, not at import of the package

    slug = args.model.replace("/", "--")
    name = f"{slug}-{os.getpid()}@{socket.gethostname()}"
    runtime = WorkerRuntime(settings, args.model, folder, name)
    app = create_celery(settings)

    def run(task: str, kind: type[JobBase], payload: dict, work) -> None:  # noqa: ANN001
        try:
            job = kind.model_validate(payload)
        except ValidationError as e:
            # A payload this worker cannot read (API and worker versions apart): end the job rather
            # than leave it queued, and never log the payload (it holds the prompt).
            log.error("job %s: unreadable %s payload (%d problems)", payload.get("job_id"), task, e.error_count())
            runtime.reject(str(payload.get("job_id", "")), f"The worker could not read this {task} job.")
            return
        with job_logging(job, task):
            work(job)

    @app.task(name=TASK_GENERATE, ignore_result=True)
    def generate(payload: dict) -> None:
        run(TASK_GENERATE, GenerateJob, payload, runtime.generate)

    @app.task(name=TASK_EMBED, ignore_result=True)
    def embed(payload: dict) -> None:
        run(TASK_EMBED, EmbedJob, payload, runtime.embed)

    @app.task(name=TASK_TOKENIZE, ignore_result=True)
    def tokenize(payload: dict) -> None:
        run(TASK_TOKENIZE, TokenizeJob, payload, runtime.tokenize)

    @app.task(name=TASK_INITIALIZE, ignore_result=True)
    def initialize(payload: dict) -> None:
        run(TASK_INITIALIZE, InitializeJob, payload, runtime.initialize)

    @control_command(args=[("model", str)], signature="<model>")
    def llmhost_move(state, model: str) -> dict:  # noqa: ANN001 - Celery's control state
        """Remote control (the API's `POST /v1/workers/{name}/model`): serve another model."""
        try:
            target = resolve(settings.models_dir, model).path
        except JobError as e:
            return {"error": e.message}
        consumer = state.consumer

        def switch(add: str, cancel: str) -> None:  # queue changes happen on the consumer's loop
            if cancel:
                consumer.call_soon(consumer.cancel_task_queue, cancel)
            if add:
                consumer.call_soon(consumer.add_task_queue, add)

        threading.Thread(target=runtime.move_to, args=(model, target, switch), name="llmhost-move", daemon=True).start()
        return {"ok": f"moving to {model}"}

    try:
        runtime.start()
    except JobError as e:
        log.error("model %s failed to load: %s", args.model, e.message)
        return EXIT_LOAD_FAILED
    try:
        # threads pool: the model lives in this process (no fork after torch is loaded) and up to
        # max_batch jobs are in flight, each pool thread waiting on its sequences while the engine
        # thread batches them. Prefetch 1 per thread: beyond that, jobs wait in Redis, where any
        # worker of this model can take them.
        quiet = ["--quiet"] if settings.log_format == "json" else []  # no startup banner among JSON lines
        app.worker_main([
            *quiet, "worker", "--pool=threads", f"--concurrency={runtime.concurrency}", "--prefetch-multiplier=1",
            "-Q", queue_name(args.model), "-n", name, "-E",
            "--without-gossip", "--without-mingle", f"--loglevel={settings.log_level}",
        ])
    finally:
        runtime.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
