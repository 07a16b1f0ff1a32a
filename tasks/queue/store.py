"""The front's async view of job records: create, read, move."""

from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio as aioredis

from tasks.contract.records import TRANSITION_LUA, decode_record, job_key, transition_args


class JobStore:
    """The front's async view of job records."""

    def __init__(self, client: aioredis.Redis, ttl: int) -> None:
        self._r = client
        self._ttl = ttl
        self._transition = client.register_script(TRANSITION_LUA)

    async def create(self, job_id: str, endpoint: str, model: str, meta: dict[str, Any]) -> float:
        created = time.time()
        key = job_key(job_id)
        async with self._r.pipeline(transaction=True) as p:
            p.hset(key, mapping={
                "status": "queued", "endpoint": endpoint, "model": model,
                "created_at": created, "meta": json.dumps(meta), "ttl": self._ttl,
            })
            p.expire(key, self._ttl)
            await p.execute()
        return created

    async def get(self, job_id: str) -> dict[str, Any] | None:
        raw = await self._r.hgetall(job_key(job_id))
        return decode_record(raw) if raw else None

    async def move(self, job_id: str, status: str, **fields: Any) -> str:
        fields.setdefault("finished_at", time.time())
        res = await self._transition(keys=[job_key(job_id)], args=transition_args(status, self._ttl, fields))
        return res.decode() if isinstance(res, bytes) else res
