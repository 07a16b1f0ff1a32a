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

# Admit and enqueue a new job in one step. KEYS[1] the job hash, KEYS[2] its queue's list; ARGV[1] the
# queue's depth limit (0: none), ARGV[2] the record's ttl, ARGV[3] the job's message, ARGV[4] now (its
# time in UNCLAIMED, tasks/contract/records.py), ARGV[5..] the record's field/value pairs. Returns -1 when the job was recorded and queued, else the queue's
# depth (at the limit: nothing written). One round trip, and no race between the check and the push.
CREATE_LUA = """
local limit = tonumber(ARGV[1])
if limit > 0 then
  local depth = redis.call('LLEN', KEYS[2])
  if depth >= limit then return depth end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
redis.call('LPUSH', KEYS[2], ARGV[3])
redis.call('ZADD', 'llmhost:unclaimed', ARGV[4], string.sub(KEYS[1], 13))
return -1
"""

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
        self._create = client.register_script(CREATE_LUA)

    async def create(self, job_id: str, endpoint: str, model: str, meta: dict[str, Any], *,
                     task: str, queue: str, klass: str, payload: str, message: tuple[str, str],
                     ttl: int | None = None, max_depth: int = 0) -> int | None:
        """Record a queued job and push its ``message`` (list, message: ``task_message``) in one
        atomic step (CREATE_LUA): there is never a record without its message, nor a message
        without its record. With ``max_depth`` > 0, refused when the message's list already holds
        that many: then nothing is written and the list's depth is returned (None: created).

        The record keeps what it takes to deliver it again (task, queue, payload) should its worker
        die before anyone saw its output. ``ttl`` replaces the setting's (a background response's
        job lives as long as its stored response; a batch line may wait as long as its batch's
        window)."""
        ttl = ttl or self._ttl
        now = time.time()
        fields = {"status": "queued", "endpoint": endpoint, "model": model, "created_at": now,
                  "meta": json.dumps(meta), "ttl": ttl, "task": task, "queue": queue, "class": klass,
                  "payload": payload, "attempts": 0}
        pairs: list[Any] = [x for kv in fields.items() for x in kv]
        depth = int(await self._create(keys=[job_key(job_id), message[0]], args=[max_depth, ttl, message[1], now, *pairs]))
        return None if depth < 0 else depth

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

    async def send(self, job_id: str, message: tuple[str, str]) -> None:
        """Push a requeued job's message (``task_message``) and take the job out of the outbox
        (REAP_LUA put it there), in one transaction."""
        async with self._r.pipeline(transaction=True) as p:
            p.lpush(*message)
            p.zrem(OUTBOX, job_id)
            await p.execute()
