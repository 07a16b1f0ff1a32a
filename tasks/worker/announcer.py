"""Worker presence: each worker announces itself in a Redis hash that expires unless refreshed.

The front reads these (:mod:`tasks.queue.presence`) to route and to fail fast.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any, Callable

import redis

from tasks.contract.records import WORKER_KEY


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
