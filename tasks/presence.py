"""Worker presence: each worker announces itself in a Redis hash that expires unless refreshed.

The front reads these to route (is any worker ready for this model?) and to fail fast (503 at
once rather than a job that waits in a queue nobody consumes).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import redis
import redis.asyncio as aioredis

WORKER_KEY = "llmhost:worker:{}"
WORKER_PATTERN = "llmhost:worker:*"


def queue_name(model_id: str) -> str:
    """The Celery queue that the workers of one model consume."""
    return f"llmhost.model.{model_id}"


@dataclass
class WorkerInfo:
    name: str
    model: str
    state: str  # loading | ready | failed
    device: str = ""
    dtype: str = ""
    pid: int = 0
    host: str = ""
    started_at: float = 0.0
    heartbeat_at: float = 0.0
    error: str = ""
    kind: str = ""  # chat | embedding
    running: int = 0
    waiting: int = 0
    peak_batch: int = 0

    @classmethod
    def from_hash(cls, raw: dict) -> "WorkerInfo":
        d = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}
        return cls(
            name=d.get("name", ""), model=d.get("model", ""), state=d.get("state", ""),
            device=d.get("device", ""), dtype=d.get("dtype", ""), pid=int(d.get("pid") or 0),
            host=d.get("host", ""), started_at=float(d.get("started_at") or 0),
            heartbeat_at=float(d.get("heartbeat_at") or 0), error=d.get("error", ""), kind=d.get("kind", ""),
            running=int(d.get("running") or 0), waiting=int(d.get("waiting") or 0),
            peak_batch=int(d.get("peak_batch") or 0),
        )


class Announcer:
    """Worker side: writes this worker's hash and keeps it alive from a daemon thread."""

    def __init__(self, client: redis.Redis, name: str, model: str, interval: float, ttl: int) -> None:
        self._r = client
        self.key = WORKER_KEY.format(name)
        self._interval = interval
        self._ttl = ttl
        self._fields: dict[str, Any] = {
            "name": name, "model": model, "pid": os.getpid(), "host": socket.gethostname(),
            "started_at": time.time(),
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats: Callable[[], dict[str, Any]] = dict  # live figures refreshed with each beat


    def update(self, **fields: Any) -> None:
        self._fields.update({k: v for k, v in fields.items() if v is not None})
        self._write()

    def _write(self) -> None:
        self._fields["heartbeat_at"] = time.time()
        self._fields.update(self.stats())
        with self._r.pipeline() as p:
            p.hset(self.key, mapping={k: str(v) for k, v in self._fields.items()})
            p.expire(self.key, self._ttl)
            p.execute()

    def start(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self._interval):
                try:
                    self._write()
                except redis.RedisError:
                    pass  # Redis away: the key expires and the front stops routing here; retry next beat.
        self._thread = threading.Thread(target=beat, name="llmhost-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            self._r.delete(self.key)
        except redis.RedisError:
            pass


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


async def queue_depths(client: aioredis.Redis, models: list[str]) -> dict[str, int]:
    """Front side: jobs waiting in each model's Celery queue (not yet taken by a worker).

    Celery's Redis transport keeps a queue as a list under the queue's name (messages sent with a
    priority go to sibling lists; the front sends none)."""
    if not models:
        return {}
    async with client.pipeline(transaction=False) as p:
        for m in models:
            p.llen(queue_name(m))
        counts = await p.execute()
    return {m: int(n or 0) for m, n in zip(models, counts)}
