"""The front's async view of job records: create, read, move."""

from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio as aioredis

from tasks.contract.records import (
    HELD_KEY,
    OUTBOX,
    REAP_LUA,
    TRANSITION_LUA,
    decode_record,
    job_key,
    reap_args,
    transition_args,
)

# Note a redelivery of a job still queued (and only then: a job taken meanwhile, or gone, is left alone).
MARK_REQUEUED_LUA = """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'requeued_at', ARGV[1])
return 1
"""


class JobStore:
    """The front's async view of job records."""

    def __init__(self, client: aioredis.Redis, ttl: int) -> None:
        self._r = client
        self._ttl = ttl
        self._transition = client.register_script(TRANSITION_LUA)
        self._reap = client.register_script(REAP_LUA)
        self._mark_requeued = client.register_script(MARK_REQUEUED_LUA)

    async def create(self, job_id: str, endpoint: str, model: str, meta: dict[str, Any], *,
                     task: str, queue: str, klass: str, payload: str, ttl: int | None = None) -> float:
        """Record a queued job with what it takes to deliver it again (task, queue, payload) should
        its worker die before anyone saw its output. ``ttl`` replaces the setting's (a background
        response's job lives as long as its stored response; a batch line may wait as long as its
        batch's window)."""
        created = time.time()
        key = job_key(job_id)
        ttl = ttl or self._ttl
        async with self._r.pipeline(transaction=True) as p:
            p.hset(key, mapping={
                "status": "queued", "endpoint": endpoint, "model": model,
                "created_at": created, "meta": json.dumps(meta), "ttl": ttl,
                "task": task, "queue": queue, "class": klass, "payload": payload, "attempts": 0,
            })
            p.expire(key, ttl)
            p.zadd(OUTBOX, {job_id: created})  # until its message is sent (JobStore.sent)
            await p.execute()
        return created

    async def statuses(self, job_ids: list[str]) -> list[str | None]:
        """The status of each job (None when its record is gone), in one round trip."""
        async with self._r.pipeline(transaction=False) as p:
            for job_id in job_ids:
                p.hget(job_key(job_id), "status")
            raw = await p.execute()
        return [s.decode() if isinstance(s, bytes) else s for s in raw]

    async def get(self, job_id: str) -> dict[str, Any] | None:
        raw = await self._r.hgetall(job_key(job_id))
        return decode_record(raw) if raw else None

    async def move(self, job_id: str, status: str, **fields: Any) -> str:
        fields.setdefault("finished_at", time.time())
        res = await self._transition(keys=[job_key(job_id)], args=transition_args(status, self._ttl, fields))
        return res.decode() if isinstance(res, bytes) else res

    async def mark_requeued(self, job_id: str) -> bool:
        """True when the job is still queued (its redelivery is noted): then send it again."""
        return bool(await self._mark_requeued(keys=[job_key(job_id)], args=[time.time()]))

    async def reap(self, job_id: str, dead_worker: str, max_attempts: int) -> str:
        """Decide a job of a dead worker (REAP_LUA): 'requeue' (the caller sends it again), 'lost',
        'poison' or 'gone'."""
        res = await self._reap(keys=[job_key(job_id), HELD_KEY.format(dead_worker)],
                               args=reap_args(dead_worker, max_attempts))
        return res.decode() if isinstance(res, bytes) else res

    async def sent(self, job_id: str) -> None:
        """Its message is on its queue: nothing left for the reapers to resend."""
        await self._r.zrem(OUTBOX, job_id)
