"""The Celery application: broker and settings chosen on purpose, built from :class:`Settings`.

The front only *sends* tasks by name (it never imports the task bodies, which need torch); the
worker registers the bodies from :mod:`tasks.worker.celery_tasks`.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from celery import Celery
from kombu.serialization import dumps

from tasks.contract.settings import Settings


def task_message(celery: Celery, task: str, payload: dict[str, Any], job_id: str, queue: str) -> tuple[str, str]:
    """One job's message as Celery's Redis transport would push it: (the list, the message), for the
    caller to LPUSH itself, the front in the same transaction as the job's record (no thread, no
    producer, no second round trip). Celery builds the task message (protocol 2); the envelope
    around it is kombu's Redis one (tests/test_queue_message.py checks it against kombu's own).
    Priority 0: the queue's plain list (kombu's other priority steps are never used here)."""
    # Task events (Flower) show argsrepr: never the prompt.
    reprs = {"argsrepr": f"<{task} {job_id}>", "kwargsrepr": "{}"}
    headers, properties, body, _ = celery.amqp.create_task_message(
        job_id, task, [payload], {}, reply_to=celery.thread_oid, ignore_result=None, **reprs)
    content_type, encoding, data = dumps(body, serializer="json")
    properties.update(reprs, delivery_mode=2, priority=0, body_encoding="base64", delivery_tag=str(uuid.uuid4()),
                      delivery_info={"exchange": "", "routing_key": queue})
    message = {"body": base64.b64encode(data.encode() if isinstance(data, str) else data).decode(),
               "content-encoding": encoding, "content-type": content_type, "headers": headers,
               "properties": properties}
    return queue, json.dumps(message)


def record_message(celery: Celery, job_id: str, rec: dict[str, Any]) -> tuple[str, str] | None:
    """The message that delivers a recorded job again (``task_message`` from the task, payload and
    queue its record keeps); None for a record without a payload."""
    if not rec.get("payload"):
        return None
    return task_message(celery, rec["task"], json.loads(rec["payload"]), job_id, rec["queue"])


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
        # dead worker from a long job, and would run a long job twice.
        task_acks_late=True,
        # Queues are per model and made on first use; nothing goes to a default queue.
        task_create_missing_queues=True,
        task_default_queue="llmhost.default",
        # Flower reads task events from the workers (received/started/succeeded). Each is a publish
        # on a job's hot path, so workers start without them and send them once a monitor asks:
        # Flower turns them on in the workers it watches (its `enable_events`, on by default, every
        # few seconds). The front never sends a "sent" event.
        worker_send_task_events=False,
        task_send_sent_event=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "socket_timeout": 5, "socket_connect_timeout": 5,
            # A worker's queues are listed interactive, background, batch: always BRPOP in that
            # order (not kombu's default round robin), so a free slot takes interactive work first.
            "queue_order_strategy": "priority",
            # No copy of each message in an `unacked` hash: that costs a round trip as each message
            # arrives (before its task can start) and another at its ack, and gives a message back
            # only after the visibility timeout (an hour). A worker claims each job as its message
            # arrives, and a message lost between the pop and the claim is sent again by a reaper
            # (UNCLAIMED in tasks/contract/records.py).
            "ack_emulation": False,
            # How long one BRPOP blocks (kombu's brpop_timeout; fractions need Redis >= 6). A queue
            # the class gate resumes (tasks/worker/gate.py) is only read from the next BRPOP on:
            # at the default 1 s, every client of a worker that had reached its batch size waited
            # up to a second for its next request to start (TTFT p50 981 ms at 32 streams once).
            "polling_interval": 0.1,
        },
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )
    return app
