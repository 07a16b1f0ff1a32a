"""The lease one API process holds on a batch while it drives it (SET NX PX, renewed)."""

from __future__ import annotations

import time

from tasks.queue.batches import BatchStore


class LeaseLost(Exception):
    """Another process holds the batch now (this one stalled past the lease): stop driving it."""


class Lease:
    def __init__(self, store: BatchStore, batch_id: str, token: str, seconds: float) -> None:
        self.store = store
        self.batch_id = batch_id
        self.token = token
        self.ms = int(seconds * 1000)
        self._renewed = time.monotonic()

    async def take(self) -> bool:
        self._renewed = time.monotonic()
        return await self.store.take_lease(self.batch_id, self.token, self.ms)

    async def keep(self, force: bool = False) -> None:
        """Renew when a third of the lease has gone by (or ``force``); raises :class:`LeaseLost`."""
        if force or time.monotonic() - self._renewed > self.ms / 3000:
            if not await self.store.renew_lease(self.batch_id, self.token, self.ms):
                raise LeaseLost(self.batch_id)
            self._renewed = time.monotonic()

    async def release(self) -> None:
        await self.store.release_lease(self.batch_id, self.token)
