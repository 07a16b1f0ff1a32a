"""The Celery application: broker and settings chosen on purpose, built from :class:`Settings`.

The front only *sends* tasks by name (it never imports the task bodies, which need torch); the
worker registers the bodies from :mod:`tasks.worker.celery_tasks`.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from tasks.contract.settings import Settings


def send_job(celery: Celery, task: str, payload: dict[str, Any], job_id: str, queue: str) -> None:
    """Enqueue one job message (first delivery, or again after its worker died). Blocking: the front
    calls it in a thread."""
    celery.send_task(task, args=[payload], task_id=job_id, queue=queue,
                     # Task events (Flower) show argsrepr: never the prompt.
                     argsrepr=f"<{task} {job_id}>", kwargsrepr="{}")


def create_celery(settings: Settings) -> Celery:
    app = Celery("llmhost", broker=settings.redis_url)
    app.conf.update(
        # Results travel through our own job records and pub/sub (tasks/jobs.py), which carry
        # statuses Celery has no words for (cancelled, deadline passed) and expire on our TTL.
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        # Nothing hoarded: a worker reserves one message per pool thread (its batch size, set by
        # tasks/worker.py); the rest wait in Redis where any worker of the model can take them.
        worker_prefetch_multiplier=1,
        # Acked when the job ends, not when it starts: the prefetch window then counts the jobs a
        # worker holds (its batch), so nothing waits reserved inside a worker where no other worker
        # can take it. Redelivery after a worker's death is ours (tasks/worker/reaper.py, from the
        # job record, with attempts counted), not the visibility timeout's: that one cannot tell a
        # dead worker from a long job, and would run a long job twice. It stays as a backstop; a
        # copy it restores is skipped by the claim (a job runs only from `queued`).
        task_acks_late=True,
        # Queues are per model and made on first use; nothing goes to a default queue.
        task_create_missing_queues=True,
        task_default_queue="llmhost.default",
        # Flower reads task events from the workers (received/started/succeeded); the front sends
        # no "sent" event: it would cost every request a publish on the hot path.
        worker_send_task_events=True,
        task_send_sent_event=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "socket_timeout": 5, "socket_connect_timeout": 5,
            # A worker's queues are listed interactive, background, batch: always BRPOP in that
            # order (not kombu's default round robin), so a free slot takes interactive work first.
            "queue_order_strategy": "priority",
            "visibility_timeout": 3600,
        },
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )
    return app
