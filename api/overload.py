"""Overload: refuse a job at once (429) when its model's queue already holds too many.

A queue that keeps growing means the workers of that model cannot keep up; answering 429 with a
``Retry-After`` lets clients back off instead of waiting in a line that ends in a 504.
"""

from __future__ import annotations

import math

import redis.asyncio as aioredis

from tasks.contract.errors import JobError
from tasks.contract.records import queue_name

MAX_RETRY_AFTER = 5


def retry_after(depth: int, limit: int) -> int:
    """1 s at the limit, one more second per further queue's worth of waiting jobs, at most 5."""
    return max(1, min(MAX_RETRY_AFTER, math.ceil(depth / max(limit, 1))))


def queue_full(model: str, depth: int, limit: int) -> JobError:
    return JobError(
        f"The queue of `{model}` is full ({depth} jobs waiting, limit {limit}, LLMHOST_MAX_QUEUE_DEPTH); retry later.",
        status_code=429, type="rate_limit_error", code="queue_full",
        headers={"Retry-After": str(retry_after(depth, limit))},
    )


async def check_queue(client: aioredis.Redis, model: str, klass: str, limit: int) -> None:
    """Raise 429 ``queue_full`` when ``limit`` > 0 and the model's queue of this class holds
    ``limit`` jobs or more: each class has its own limit, so a backlog of bulk work never turns
    interactive requests away."""
    if limit <= 0:
        return
    depth = int(await client.llen(queue_name(model, klass)) or 0)  # type: ignore[arg-type]
    if depth >= limit:
        raise queue_full(model, depth, limit)
