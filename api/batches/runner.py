"""Where batches run: an asyncio task in every API process, each batch driven by one of them.

Why in the API processes: driving a batch needs no GPU and no model (it reads lines, sends jobs,
records results, all through Redis), and the API processes are always there, one or many. A Celery
task on a control queue would hold a pool thread of some worker for hours and die with it; a
service of its own is one more thing to deploy and watch. Which process drives a batch is decided
by a lease in Redis (SET NX PX, renewed every few seconds): a process that dies, or stalls past
LLMHOST_BATCH_LEASE_SECONDS, loses it and the next process that looks takes the batch over. All of
a batch's state is in Redis (each line's job id, the lines recorded), so the taker resumes where
the other stopped without running or writing a line twice (api/batches/driver.py).
LLMHOST_BATCH_RUNNER=false leaves an API process out (replicas that only answer requests).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

import redis

from tasks.queue.batches import FINAL_BATCH, BatchStore

from .driver import BatchDriver
from .lease import Lease, LeaseLost
from .record import BatchRecord

log = logging.getLogger("llmhost.batches")

TICK = 0.25  # seconds between two steps of a batch (lines finish and are refilled at this pace)
LOOK = 1.0  # seconds between two looks for batches nobody drives
MAX_BACKOFF = 5.0


class BatchRunner:
    def __init__(self, store: BatchStore, driver: BatchDriver, lease_seconds: float) -> None:
        self.store = store
        self.driver = driver
        self.lease_seconds = lease_seconds
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._driving: dict[str, tuple[asyncio.Task, Lease]] = {}
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """A batch was just created here: look now rather than at the next round."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._look(), name="llmhost-batch-runner")

    async def stop(self) -> None:
        """Stop driving and hand the leases back, so another process takes over at once."""
        tasks = [t for t, _ in self._driving.values()] + ([self._task] if self._task else [])
        leases = [lease for _, lease in self._driving.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for lease in leases:
            try:
                await asyncio.wait_for(lease.release(), 2)
            except (redis.RedisError, TimeoutError):
                pass  # it lapses on its own

    @property
    def driving(self) -> list[str]:
        return sorted(self._driving)

    async def _look(self) -> None:
        """Take the lease of every active batch nobody drives."""
        pause = LOOK
        while True:
            try:
                for batch_id in await self.store.active():
                    if batch_id not in self._driving:
                        lease = Lease(self.store, batch_id, self.token, self.lease_seconds)
                        if await lease.take():
                            log.info("driving batch %s", batch_id)
                            task = asyncio.create_task(self._drive(lease), name=f"llmhost-batch-{batch_id}")
                            self._driving[batch_id] = (task, lease)
                pause = LOOK
            except redis.RedisError as e:
                pause = min(pause * 2, MAX_BACKOFF)
                log.warning("batch runner: Redis unavailable (%s); retrying in %.1f s", e, pause)
            try:
                await asyncio.wait_for(self._wake.wait(), pause)
            except TimeoutError:
                pass
            self._wake.clear()

    async def _drive(self, lease: Lease) -> None:
        pause = TICK
        try:
            while True:
                try:
                    await lease.keep()
                    raw = await self.store.get(lease.batch_id)
                    if raw is None or raw["status"] in FINAL_BATCH:
                        await lease.release()
                        return
                    await self.driver.step(BatchRecord(raw), lease)
                    pause = TICK
                except LeaseLost:
                    log.warning("batch %s: lease lost; another process drives it now", lease.batch_id)
                    return
                except redis.RedisError as e:
                    pause = min(pause * 2, MAX_BACKOFF)
                    log.warning("batch %s: Redis unavailable (%s); retrying", lease.batch_id, e)
                except Exception:  # noqa: BLE001 - a bug in one step must not end the batch or spin
                    log.exception("batch %s: step failed", lease.batch_id)
                    pause = MAX_BACKOFF
                await asyncio.sleep(pause)
        finally:
            self._driving.pop(lease.batch_id, None)
