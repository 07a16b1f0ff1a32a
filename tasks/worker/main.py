"""A worker process: ``python -m tasks.worker --model VENDOR/MODEL``.

Loads the one model first (announcing ``loading``), then consumes only that model's queue. A model
that fails to load is announced as ``failed`` and the process exits non-zero, so the supervisor
(``make run``) or the container runtime restarts it.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import uuid

from tasks.contract.catalog import resolve
from tasks.contract.celery_app import create_celery
from tasks.contract.errors import EXIT_LOAD_FAILED, JobError
from tasks.contract.logging_setup import setup_logging
from tasks.contract.settings import get_settings

log = logging.getLogger("llmhost.worker")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.worker", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("LLMHOST_MODEL"), help="model id: folder under LLM/")
    args = parser.parse_args(argv)
    if not args.model:
        parser.error("--model (or LLMHOST_MODEL) is required")

    settings = get_settings()
    setup_logging(settings.log_level, settings.log_format, context={"service": "worker", "model": args.model})
    _quiet_celery_task_lines()
    try:
        folder = resolve(settings.models_dir, args.model).path
    except JobError as e:
        log.error("%s (models dir: %s)", e.message, settings.models_dir)
        return 2

    if settings.log_format == "json":  # stderr holds JSON lines only: no progress bars, no banner
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # torch comes in here, not at import of the package.
    from tasks.worker import celery_tasks
    from tasks.worker.reaper import Reaper
    from tasks.worker.runtime import WorkerRuntime

    # Unique per start: a restarted container has the same host name and pid 1, and a worker must
    # never inherit its dead predecessor's name (the reapers would take the dead one for alive).
    name = f"{args.model.replace('/', '--')}-{os.getpid()}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    app = create_celery(settings)
    try:
        runtime = WorkerRuntime(settings, args.model, folder, name)
        celery_tasks.bind(runtime)
        app.steps["consumer"].add(celery_tasks.ConsumerHandle)
        runtime.start()
    except JobError as e:
        log.error("model %s failed to load: %s", args.model, e.message)
        return EXIT_LOAD_FAILED
    # Delivers again what dead workers held (this worker's own former self included).
    reaper = Reaper(runtime.redis, runtime.jobs, app, name, settings.max_attempts, settings.heartbeat_interval)
    reaper.start()
    try:
        # threads pool: the model lives in this process (no fork after torch is loaded) and up to
        # max_batch jobs are in flight, each pool thread waiting on its sequences while the engine
        # thread batches them. Prefetch 1 per thread: beyond that, jobs wait in Redis, where any
        # worker of this model can take them. No -E: task events start when Flower asks for them
        # (enable_events); that needs the worker's event dispatcher, which its heartbeats keep on:
        # never add --without-heartbeat.
        quiet = ["--quiet"] if settings.log_format == "json" else []  # no startup banner among JSON lines
        app.worker_main([
            *quiet, "worker", "--pool=threads", f"--concurrency={runtime.concurrency}", "--prefetch-multiplier=1",
            "-Q", ",".join(runtime.queues()), "-n", name,
            "--without-gossip", "--without-mingle", f"--loglevel={settings.log_level}",
        ])
    finally:
        reaper.stop()
        runtime.stop()
    return 0


def _quiet_celery_task_lines() -> None:
    """Celery's two INFO lines per task ("Task … received", "Task … succeeded in …") say what the
    one line per job of celery_tasks.job_logging says. The first was written on the consumer's
    thread as each message arrived, before the job's claim: a quarter of that thread's samples per
    message (py-spy). Kept at DEBUG; Celery's warnings and errors (a task that raised) always show."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in ("celery.worker.strategy", "celery.app.trace"):
            logging.getLogger(name).setLevel(logging.WARNING)
