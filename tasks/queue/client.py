"""The front's interface to the queue: submit a job, follow its events, cancel it.

Everything here is async and never blocks the event loop: Redis is reached with ``redis.asyncio``,
and a job's Celery message (built by Celery, :func:`tasks.contract.celery_app.task_message`) is
pushed in the same transaction as its record: one round trip, no thread. No torch is imported.

Each API process subscribes once to its own reply channel (:class:`EventHub`), and every job it
waits for names that channel in ``reply_to``: no Redis connection or SUBSCRIBE per request, and no
process receives other processes' tokens. A job's queue is registered *before* the job is enqueued,
so no early token is lost. When its queue is quiet a waiter looks at the job record, so a lost
message, a dead worker or a deadline never leaves it waiting forever. :class:`JobWatch` hands a
job's events out typed (:mod:`tasks.queue.events`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any, Generic, cast

import redis
import redis.asyncio as aioredis
from celery import Celery
from pydantic import ValidationError

from tasks.contract.celery_app import record_message, task_message
from tasks.contract.errors import JobError, queue_full, server_error
from tasks.contract.payloads import FINAL_STATUSES, TASK_GENERATE, Event, JobBase, read_reply
from tasks.contract.records import WORKER_KEY, WorkerInfo, queue_name, reply_channel
from tasks.queue.events import (
    Failed,
    Finished,
    JobEvent,
    JobObserver,
    NoObserver,
    R,
    ReasoningDelta,
    TextDelta,
    delta_of,
    parse_result,
)
from tasks.queue.presence import live_workers
from tasks.queue.store import JobStore

log = logging.getLogger("llmhost.client")

POLL_SECONDS = 1.0
_BACKGROUND: set[asyncio.Task] = set()  # cleanup tasks must not be garbage-collected mid-flight
PRESENCE_CACHE_SECONDS = 0.5  # a view older than this is refreshed in the background
PRESENCE_STALE_SECONDS = 2.0  # older than this (or none yet), the request reads it itself


def cancel_soon(client: "JobClient", job_id: str, reason: str, attempts: int = 5) -> None:
    """Cancel a job from a task of its own (the caller may be inside a cancelled scope), retried
    with back-off while Redis is unreachable, so a client that left never keeps a worker busy."""
    async def run() -> None:
        for attempt in range(attempts):
            try:
                await client.cancel(job_id, reason)
                return
            except Exception as e:  # noqa: BLE001 - Redis away: retry, then say so
                if attempt == attempts - 1:
                    log.warning("job %s could not be cancelled (%s); its deadline still ends it", job_id, e)
                    return
                await asyncio.sleep(0.5 * 2 ** attempt)

    task = asyncio.ensure_future(run())
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


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
                        # One event, or a step's for this front; what cannot be read is skipped
                        # (it must not cost the subscription, nor the other streams their text).
                        events, unreadable = read_reply(msg["data"])
                        if unreadable:
                            log.warning("ignoring %d unreadable event(s) on the reply channel", unreadable)
                        for event in events:
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
        self._presence: tuple[float, list[WorkerInfo]] = (float("-inf"), [])
        self._presence_read: "asyncio.Future[list[WorkerInfo]] | None" = None

    async def workers(self, fresh: bool = False) -> list[WorkerInfo]:
        """Live workers. Routing waits for no round trip: a view older than half a second is
        refreshed in the background while requests use it, and read in the request only when it
        is older than PRESENCE_STALE_SECONDS (an idle front) or ``fresh`` is asked for."""
        at, cached = self._presence
        age = time.monotonic() - at
        if fresh or age > PRESENCE_STALE_SECONDS:
            return await self._read_presence()
        if age > PRESENCE_CACHE_SECONDS and self._presence_read is None:
            self._presence_read = task = asyncio.ensure_future(self._read_presence())
            task.add_done_callback(self._presence_read_done)
        return cached

    async def _read_presence(self) -> list[WorkerInfo]:
        started = time.monotonic()
        workers = await live_workers(self.redis)
        if started >= self._presence[0]:  # never replace a newer view with an older one
            self._presence = (started, workers)
        return workers

    def _presence_read_done(self, task: "asyncio.Future[list[WorkerInfo]]") -> None:
        self._presence_read = None
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not refresh worker presence: %s", task.exception())

    async def submit(self, task: str, job: JobBase, *, endpoint: str, meta: dict[str, Any], watch: bool,
                     ttl: int | None = None, max_depth: int = 0) -> "JobWatch | None":
        """Open the job's event queue (when ``watch``), then record and enqueue it in one atomic
        step (its record kept ``ttl`` seconds when given, else the setting's). With ``max_depth``,
        a queue that already holds that many jobs refuses it: 429 ``queue_full``, nothing written."""
        job_id, model = job.job_id, job.model
        watcher: JobWatch[Any] | None = None
        if watch:
            job.reply_to = self.hub.channel
            watcher = JobWatch(self, job_id, model, deadline=job.deadline, task=task)
        queue = queue_name(model, job.klass)
        payload = job.model_dump(mode="json")
        try:
            depth = await self.store.create(job_id, endpoint, model, meta, task=task, queue=queue, klass=job.klass,
                                            payload=json.dumps(payload), ttl=ttl, max_depth=max_depth,
                                            message=task_message(self.celery, task, payload, job_id, queue))
        except BaseException:
            # Interrupted (the client left, Redis failed) when the job may exist: it must still end
            # in a final state, and its message must not run (cancelling an unknown job is a
            # no-op). As its own task: we may be inside a cancelled scope.
            if watcher:
                await watcher.close()
            cancel_soon(self, job_id, "the request ended before the job was queued")
            raise
        if depth is not None:  # refused: nothing was written
            if watcher:
                await watcher.close()
            raise queue_full(model, depth, max_depth)
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

    async def redeliver_if_lost(self, job_id: str, rec: dict[str, Any], after: float) -> bool:
        """Send a queued job's message again when it is gone: no worker took it (no ``worker``), its
        queue is empty, and it has waited ``after`` seconds since it was (re)queued. That happens when
        Redis restarts and its last second is lost after a worker had popped the message but before
        its claim was written. A copy too many is harmless: a job runs only from ``queued``."""
        if rec.get("status") != "queued" or rec.get("worker") or not rec.get("payload"):
            return False
        if time.time() - max(float(rec.get("created_at") or 0), float(rec.get("requeued_at") or 0)) < after:
            return False
        if int(await self.redis.llen(rec["queue"]) or 0):
            return False
        if not await self.store.mark_requeued(job_id):
            return False
        message = record_message(self.celery, job_id, rec)
        assert message is not None  # it has a payload
        await self.redis.lpush(*message)
        log.warning("job %s: its message was lost; sent again", job_id, extra={"job_id": job_id})
        return True

    async def reconcile(self, job_id: str, rec: dict[str, Any]) -> dict[str, Any]:
        """Settle a job whose worker died (delivered again, or failed when that cannot be done
        invisibly: tasks.contract.records.REAP_LUA decides), and fail an interactive job that
        waits while no worker of its model is left (a client is waiting on it; background and
        batch jobs wait for a worker until their deadline). Returns the (possibly updated) record."""
        worker = rec.get("worker", "")
        if rec["status"] in ("queued", "running") and worker and not await self.worker_alive(worker):
            outcome = await self.store.reap(job_id, worker, self.max_attempts)
            if outcome == "requeue" and (message := record_message(self.celery, job_id, rec)) is not None:
                await self.store.send(job_id, message)
            return await self.store.get(job_id) or rec
        if (rec["status"] == "queued" and rec.get("class", "interactive") == "interactive"
                and not await self.model_has_worker(rec.get("model", ""))):
            err = JobError(f"No worker is serving `{rec.get('model')}` any more.", status_code=503,
                           type="service_unavailable", code="model_not_served", param="model")
            if await self.store.move(job_id, "failed", error=err.to_dict()) == "ok":
                rec = {**rec, "status": "failed", "error": err.to_dict()}
        return rec


class JobWatch(Generic[R]):
    """One job's typed events (:mod:`tasks.queue.events`) in order: text deltas, then ``Finished``
    or ``Failed``, then the end. The only reader of a job's events: its queue on this process's
    reply channel and, when that is quiet, its record. It tells ``observer`` (the front's metrics)
    each delta and exactly one outcome: succeeded, failed (timeouts included), or cancelled when
    the watcher leaves before the end.

    ``async with watch: async for event in watch: ...``; leaving the block early cancels the job.
    """

    def __init__(self, client: JobClient, job_id: str, model: str, deadline: float, task: str = TASK_GENERATE) -> None:
        self.client = client
        self.job_id = job_id
        self.model = model
        self.deadline = deadline
        self.task = task
        self.observer: JobObserver = NoObserver()  # set by whoever counts the job
        self._timeout = max(0.0, deadline - time.time())
        self._queue = client.hub.open(job_id)
        self._held: JobEvent[R] | None = None  # what came instead of `started`
        self.finished = False  # the job reached a final state: nothing left to cancel
        self._ended = False  # its last event was handed out (and its outcome told)

    async def close(self) -> None:
        self.client.hub.close(self.job_id)

    async def __aenter__(self) -> "JobWatch[R]":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if not self._ended:
            self._ended = True
            self.observer.cancelled()
        # A watcher that leaves before the end (client gone, timeout, error) cancels the job so the
        # worker stops spending time on it. The cancel runs as a task of its own: we may be inside a
        # cancelled anyio scope (sse-starlette on disconnect), where any await here would be
        # cancelled again before Redis heard of it.
        if not self.finished:
            cancel_soon(self.client, self.job_id, "the client stopped waiting")
        await self.close()

    def __aiter__(self) -> "JobWatch[R]":
        return self

    async def __anext__(self) -> JobEvent[R]:
        if self._ended:
            raise StopAsyncIteration
        event, self._held = self._held, None
        while event is None:
            event = await self._next()
        self._observe(event)
        return event

    async def started(self) -> None:
        """Wait until the worker accepted the job (the prompt passed its checks). A refusal, a
        timeout or a lost worker before that is raised, so that a stream answers an ordinary HTTP
        error rather than a 200 followed by an error event."""
        try:
            event = await self._next(until_started=True)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        if isinstance(event, Failed):
            self._observe(event)
            await self.__aexit__(None, None, None)
            raise event.error
        self._held = event  # a delta or the result came first: `started` was lost on the way

    async def result(self) -> R:
        """Run to the end: the job's result, or its error raised."""
        async with self:
            async for event in self:
                if isinstance(event, Finished):
                    return event.result
                if isinstance(event, Failed):
                    raise event.error
        raise server_error("The job's events ended without a result.")  # unreachable: a watch ends with one

    def _observe(self, event: JobEvent[R]) -> None:
        if isinstance(event, (TextDelta, ReasoningDelta)):
            self.observer.delta(event.index)
            return
        self._ended = True
        if isinstance(event, Finished):
            self.observer.succeeded(event.result)
        else:
            self.observer.failed(event.error)

    async def _next(self, until_started: bool = False) -> JobEvent[R] | None:
        """The next typed event; None for `started` when ``until_started``."""
        while True:
            remaining = self.deadline - time.time()
            if remaining <= 0:
                return Failed(timeout_error(self._timeout))  # the job has not ended: cancelled on exit
            try:
                wire: Event | None = self._queue.get_nowait()  # no timer for what is already here
            except asyncio.QueueEmpty:
                try:
                    async with asyncio.timeout(min(POLL_SECONDS, remaining)):
                        wire = await self._queue.get()
                except TimeoutError:
                    wire = await self._from_record()
            if wire is None:
                continue
            if wire.type == "started":
                if until_started:
                    return None
                continue
            return self._typed(wire)

    def _typed(self, wire: Event) -> JobEvent[R]:
        if wire.type == "delta":
            return delta_of(wire)
        self.finished = True
        if wire.type == "error":
            return Failed(JobError.from_dict(wire.error or {}))
        try:
            return Finished(cast(R, parse_result(self.task, wire.result)))
        except ValidationError as e:
            log.error("job %s: unreadable result (%s)", self.job_id, e.errors()[:1])
            return Failed(server_error("The worker returned a result the API cannot read."))

    async def _from_record(self) -> Event | None:
        """When the channel is quiet: has the job ended (or its worker gone) meanwhile? Redis
        unreachable: keep waiting (the deadline still bounds it; the hub resubscribes)."""
        try:
            rec = await self.client.store.get(self.job_id)
            if rec is not None:
                rec = await self.client.reconcile(self.job_id, rec)
        except redis.RedisError as e:
            log.warning("job %s: its record cannot be read now (%s); waiting", self.job_id, e)
            return None
        if rec is None:
            return Event(type="error", error=JobError("The job record expired.", status_code=500, type="server_error").to_dict())
        if rec["status"] == "succeeded":
            return Event(type="done", result=rec.get("result"))
        if rec["status"] in FINAL_STATUSES:
            return Event(type="error", error=rec.get("error") or {})
        return None
