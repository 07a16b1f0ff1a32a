"""Worker presence: each worker announces itself in a Redis hash that expires unless refreshed.

The front reads these (:mod:`tasks.queue.presence`) to route and to fail fast.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any, Callable

import redis

from tasks.contract.records import WORKER_KEY, WORKER_NAMES

log = logging.getLogger("llmhost.worker")


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
        """Change what this worker announces. A Redis blip must not cost a model load: the fields
        are kept and the heartbeat thread writes them at its next beat."""
        self._fields.update({k: v for k, v in fields.items() if v is not None})
        try:
            self._write()
        except redis.RedisError as e:
            log.warning("could not announce %s (%s); the heartbeat retries", fields or "presence", e)

    def _write(self) -> None:
        self._fields["heartbeat_at"] = time.time()
        self._fields.update(self.stats())
        with self._r.pipeline() as p:
            p.hset(self.key, mapping={k: str(v) for k, v in self._fields.items()})
            p.expire(self.key, self._ttl)
            p.sadd(WORKER_NAMES, self._fields["name"])  # known to the reapers of the other workers
            p.execute()

    def start(self) -> None:
        def beat() -> None:
            backoff = self._interval
            while not self._stop.wait(backoff):
                try:
                    self._write()
                    backoff = self._interval
                except redis.RedisError:
                    # Redis away: the key expires and the front stops routing here; retry soon.
                    backoff = min(self._interval, 0.5)
        self._thread = threading.Thread(target=beat, name="llmhost-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """A clean exit: gone from presence at once (its held jobs, if any, are reaped)."""
        self._stop.set()
        try:
            self._r.delete(self.key)
        except redis.RedisError:
            pass
