"""Stored responses (``/v1/responses``): one JSON document per response, kept ``ttl`` seconds and at
most ``limit`` of them (the oldest go first). The front reads and writes them only through this;
what a document holds is the front's business (``api/responses_api/objects.py``)."""

from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio as aioredis

from tasks.contract.records import events_key

RESPONSE_KEY = "llmhost:response:{}"
# Every stored response's id, scored by when it was stored: what the limit drops first.
RESPONSE_INDEX = "llmhost:responses"


def response_key(response_id: str) -> str:
    return RESPONSE_KEY.format(response_id)


class ResponseStore:
    def __init__(self, client: aioredis.Redis, ttl: int, limit: int) -> None:
        self._r = client
        self.ttl = ttl
        self.limit = limit

    async def create(self, response_id: str, doc: dict[str, Any]) -> None:
        """Store a new response; beyond the limit, the oldest stored ones are dropped."""
        now = time.time()
        async with self._r.pipeline(transaction=True) as p:
            p.set(response_key(response_id), json.dumps(doc), ex=self.ttl)
            p.zadd(RESPONSE_INDEX, {response_id: now})
            p.zremrangebyscore(RESPONSE_INDEX, "-inf", now - self.ttl)  # expired by now
            p.zcard(RESPONSE_INDEX)
            *_, count = await p.execute()
        if count > self.limit:
            oldest: Any = await self._r.zpopmin(RESPONSE_INDEX, count - self.limit)
            if oldest:
                # A background response's job id is its response id: its kept events go with it.
                ids = [rid.decode() for rid, _ in oldest]
                await self._r.delete(*(response_key(i) for i in ids), *(events_key(i) for i in ids))

    async def update(self, response_id: str, doc: dict[str, Any]) -> bool:
        """Rewrite a stored response, keeping its expiry; False (and nothing stored) when it was
        deleted or expired meanwhile: a late update never brings one back."""
        return bool(await self._r.set(response_key(response_id), json.dumps(doc), xx=True, keepttl=True))

    async def get(self, response_id: str) -> dict[str, Any] | None:
        raw = await self._r.get(response_key(response_id))
        return json.loads(raw) if raw else None

    async def delete(self, response_id: str, job_id: str | None = None) -> bool:
        """Forget a response, and the kept events of its job."""
        async with self._r.pipeline(transaction=True) as p:
            p.delete(response_key(response_id))
            p.zrem(RESPONSE_INDEX, response_id)
            if job_id:
                p.delete(events_key(job_id))
            deleted, *_ = await p.execute()
        return bool(deleted)
