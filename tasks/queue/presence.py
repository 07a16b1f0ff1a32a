"""Front side of worker presence: who is live, and how much waits in each model's queue."""

from __future__ import annotations

import redis.asyncio as aioredis

from tasks.contract.records import CLASSES, WORKER_PATTERN, WorkerInfo, queue_name


async def live_workers(client: aioredis.Redis) -> list[WorkerInfo]:
    """Front side: every worker whose heartbeat has not expired."""
    keys = [k async for k in client.scan_iter(match=WORKER_PATTERN, count=200)]
    if not keys:
        return []
    async with client.pipeline(transaction=False) as p:
        for k in keys:
            p.hgetall(k)
        rows = await p.execute()
    return [WorkerInfo.from_hash(r) for r in rows if r]


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
