"""Front side of worker presence: who is live, and how much waits in each model's queue."""

from __future__ import annotations

import redis.asyncio as aioredis

from tasks.contract.records import CLASSES, WORKER_KEY, WORKER_NAMES, WorkerInfo, queue_name

# Every announced worker's hash, in one round trip: the names come from the set each heartbeat adds
# to (a SCAN of the keyspace would walk every job record kept: hundreds of round trips on a busy
# server). A name whose hash expired (a dead worker, until a reaper removes it) reads as nothing.
LIVE_LUA = """
local out = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local h = redis.call('HGETALL', ARGV[1] .. name)
  if #h > 0 then out[#out + 1] = h end
end
return out
"""
_PREFIX = WORKER_KEY.format("")


async def live_workers(client: aioredis.Redis) -> list[WorkerInfo]:
    """Front side: every worker whose heartbeat has not expired."""
    rows = await client.eval(LIVE_LUA, 1, WORKER_NAMES, _PREFIX)
    return [WorkerInfo.from_hash(dict(zip(flat[::2], flat[1::2]))) for flat in rows]


async def queue_depths(client: aioredis.Redis, models: list[str]) -> dict[str, dict[str, int]]:
    """Front side: jobs waiting in each model's Celery queues (not yet taken by a worker), per
    priority class. Celery's Redis transport keeps a queue as a list under the queue's name
    (messages sent with a priority go to sibling lists; the front sends none)."""
    if not models:
        return {}
    async with client.pipeline(transaction=False) as p:
        for m in models:
            for k in CLASSES:
                p.llen(queue_name(m, k))
        counts = iter(await p.execute())
    return {m: {k: int(next(counts) or 0) for k in CLASSES} for m in models}
