"""The front's interface to the queue: submit a job, follow its events, cancel it.

Everything here is async and never blocks the event loop: Redis is reached with ``redis.asyncio``
and Celery's (synchronous) producer runs in a worker thread. No torch is imported.

Each API process subscribes once to its own reply channel (:class:`EventHub`), and every job it
waits for names that channel in ``reply_to``: no Redis connection or SUBSCRIBE per request, and no
process receives other processes' tokens. A job's queue is registered *before* the job is enqueued,
so no early token is lost. When its queue is quiet a waiter looks at the job record, so a lost
message, a dead worker or a deadline never leaves it waiting forever.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

import redis.asyncio as aioredis
from celery import Celery
from pydantic import BaseModel

from tasks.contract.celery_app import send_job
from tasks.contract.errors import JobError
from tasks.contract.payloads import Event
from tasks.contract.records import WORKER_KEY, JobClass, WorkerInfo, queue_name, reply_channel
from tasks.queue.presence import live_workers
from tasks.queue.store import JobStore

log = logging.getLogger("llmhost.client")

POLL_SECONDS = 1.0
_BACKGROUND: set[asyncio.Task] = set()  # cleanup tasks must not be garbage-collected mid-flight
PRESENCE_CACHE_SECONDS = 0.5


def new_job_id(prefix: str = "job") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def timeout_error(seconds: float) -> JobError:
    return JobError(
        f"The request did not finish within {seconds:g} s (LLMHOST_REQUEST_TIMEOUT) and was cancelled.",
        status_code=504, type="timeout_error", code="request_timeout",
    )


class EventHub:
    """This process's one subscription: routes each incoming event to the queue of its job."""

    def __init__(self, redis_client: aioredis.Redis) -> None:
        self.redis = redis_client
        self.channel = reply_channel(uuid.uuid4().hex)
        self._queues: dict[str, asyncio.Queue[Event]] = {}
        self._task: asyncio.Task | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="llmhost-event-hub")
        try:
            await asyncio.wait_for(self._subscribed.wait(), 2)
        except asyncio.TimeoutError:
            log.warning("reply channel not subscribed yet (Redis unreachable?); retrying in the background")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def open(self, job_id: str) -> "asyncio.Queue[Event]":
        return self._queues.setdefault(job_id, asyncio.Queue())

    def close(self, job_id: str) -> None:
        self._queues.pop(job_id, None)

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._subscribed.set()
                backoff = 0.1
                while True:
                    msg = await pubsub.get_message(timeout=1.0)  # below the socket timeout
                    if msg and msg["type"] == "message":
                        try:
                            event = Event.model_validate_json(msg["data"])
                        except ValueError:
                            log.warning("ignoring an unreadable message on the reply channel")
                            continue  # one bad message must not cost the subscription
                        queue = self._queues.get(event.job)
                        if queue is not None:
                            queue.put_nowait(event)
            except asyncio.CancelledError:
                await pubsub.aclose()
                raise
            except Exception as e:  # noqa: BLE001 - Redis went away: waiters fall back to job records
                self._subscribed.clear()
                log.warning("reply channel lost (%s); resubscribing", e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:  # noqa: BLE001
                    pass


class JobClient:
    def __init__(self, redis_client: aioredis.Redis, celery: Celery, job_ttl: int, max_attempts: int = 3) -> None:
        self.redis = redis_client
        self.celery = celery
        self.max_attempts = max_attempts
        self.store = JobStore(redis_client, job_ttl)
        self.hub = EventHub(redis_client)
        self._presence: tuple[float, list[WorkerInfo]] = (0.0, [])

    async def workers(self, fresh: bool = False) -> list[WorkerInfo]:
        """Live workers, read at most every half second: routing needs no round trip per request."""
        at, cached = self._presence
        if fresh or time.monotonic() - at > PRESENCE_CACHE_SECONDS:
            cached = await live_workers(self.redis)
            self._presence = (time.monotonic(), cached)
        return cached

    async def submit(self, task: str, job: BaseModel, *, endpoint: str, meta: dict[str, Any], watch: bool) -> "JobWatch | None":
        """Record the job, open its event queue (when ``watch``), then enqueue it."""
        job_id: str = job.job_id  # type: ignore[attr-defined]
        model: str = job.model  # type: ignore[attr-defined]
        watcher = None
        if watch:
            job.reply_to = self.hub.channel  # type: ignore[attr-defined]
            watcher = JobWatch(self, job_id, model, deadline=job.deadline)  # type: ignore[attr-defined]
        klass: JobClass = job.klass  # type: ignore[attr-defined]
        queue = queue_name(model, klass)
        payload = job.model_dump(mode="json")
        try:
            await self.store.create(job_id, endpoint, model, meta, task=task, queue=queue, klass=klass,
                                    payload=json.dumps(payload))
            await asyncio.to_thread(send_job, self.celery, task, payload, job_id, queue)
        except BaseException:
            # Interrupted (the client left, Redis failed) once the record may exist: the job must
            # still end in a final state, and a message already on its way must not run (cancelling
            # an unknown job is a no-op). As its own task: we may be inside a cancelled scope.
            if watcher:
                await watcher.close()
            task_ = asyncio.ensure_future(self.cancel(job_id, "the request ended before the job was queued"))
            _BACKGROUND.add(task_)
            task_.add_done_callback(_BACKGROUND.discard)
            raise
        return watcher

    async def cancel(self, job_id: str, reason: str = "cancelled by the client") -> bool:
        """Mark the job cancelled (the worker sees it within one decoding step) and revoke it."""
        moved = await self.store.move(job_id, "cancelled", error={
            "message": reason, "type": "cancelled", "code": "cancelled", "param": None, "status_code": 499,
        })
        if moved == "ok":
            # Revoking keeps a still-queued message from being executed at all.
            await asyncio.to_thread(self.celery.control.revoke, job_id)
        return moved == "ok"

    async def worker_alive(self, name: str) -> bool:
        return bool(name) and bool(await self.redis.exists(WORKER_KEY.format(name)))

    async def model_has_worker(self, model: str) -> bool:
        return any(w.model == model and w.state != "failed" for w in await live_workers(self.redis))

    async def reconcile(self, job_id: str, rec: dict[str, Any]) -> dict[str, Any]:
        """Settle a job whose worker died (delivered again, or failed when that cannot be done
        invisibly: tasks.contract.records.REAP_LUA decides), and fail an interactive job that
        waits while no worker of its model is left (a client is waiting on it; background and
        batch jobs wait for a worker until their deadline). Returns the (possibly updated) record."""
        worker = rec.get("worker", "")
        if rec["status"] in ("queued", "running") and worker and not await self.worker_alive(worker):
            outcome = await self.store.reap(job_id, worker, self.max_attempts)
            if outcome == "requeue" and rec.get("payload"):
                await asyncio.to_thread(send_job, self.celery, rec["task"], json.loads(rec["payload"]), job_id,
                                        rec["queue"])
            return await self.store.get(job_id) or rec
        if (rec["status"] == "queued" and rec.get("class", "interactive") == "interactive"
                and not await self.model_has_worker(rec.get("model", ""))):
            err = JobError(f"No worker is serving `{rec.get('model')}` any more.", status_code=503,
                           type="service_unavailable", code="model_not_served", param="model")
            if await self.store.move(job_id, "failed", error=err.to_dict()) == "ok":
                rec = {**rec, "status": "failed", "error": err.to_dict()}
        return rec


class JobWatch:
    """Events of one job, in order, ending with ``done`` or ``error`` (or a raised JobError)."""

    def __init__(self, client: JobClient, job_id: str, model: str, deadline: float) -> None:
        self.client = client
        self.job_id = job_id
        self.model = model
        self.deadline = deadline
        self._timeout = max(0.0, deadline - time.time())
        self._queue = client.hub.open(job_id)
        self._pending: list[Event] = []
        self.finished = False

    def push_back(self, event: Event) -> None:
        """Return an event to the front of the queue (a caller peeked at it)."""
        self._pending.insert(0, event)

    async def close(self) -> None:
        self.client.hub.close(self.job_id)

    async def __aenter__(self) -> "JobWatch":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        # A watcher that leaves before the end (client gone, timeout, error) cancels the job so the
        # worker stops spending time on it. The cancel runs as a task of its own: we may be inside a
        # cancelled anyio scope (sse-starlette on disconnect), where any await here would be
        # cancelled again before Redis heard of it.
        if not self.finished:
            task = asyncio.ensure_future(self.client.cancel(self.job_id, "the client stopped waiting"))
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)
        await self.close()

    async def next(self) -> Event:
        if self._pending:
            return self._pending.pop(0)
        while True:
            remaining = self.deadline - time.time()
            if remaining <= 0:
                raise timeout_error(self._timeout)
            try:
                event = await asyncio.wait_for(self._queue.get(), timeout=min(POLL_SECONDS, remaining))
            except TimeoutError:
                polled = await self._from_record()
                if polled is None:
                    continue
                event = polled
            if event.type in ("done", "error"):
                self.finished = True
            return event

    async def _from_record(self) -> Event | None:
        """When the channel is quiet: has the job ended (or its worker gone) meanwhile?"""
        rec = await self.client.store.get(self.job_id)
        if rec is None:
            return Event(type="error", error=JobError("The job record expired.", status_code=500, type="server_error").to_dict())
        rec = await self.client.reconcile(self.job_id, rec)
        if rec["status"] == "succeeded":
            return Event(type="done", result=rec.get("result"))
        if rec["status"] in ("failed", "cancelled"):
            return Event(type="error", error=rec.get("error") or {})
        return None
