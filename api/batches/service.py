"""What the ``/v1/batches`` routes call: create, read, list and cancel batches (the runner does the rest)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Optional

from tasks.contract.errors import JobError, invalid_request
from tasks.contract.settings import Settings
from tasks.queue.batches import FINAL_BATCH, BatchStore
from tasks.queue.files import FileStore

from ..schemas.batches import BatchCreateRequest
from .record import BatchRecord
from .runner import BatchRunner

STATUS_RECENT = 10  # finished batches the status page lists besides the active ones


def _not_found(batch_id: str) -> JobError:
    return JobError(f"No batch with id `{batch_id}`.", status_code=404, code="batch_not_found", param="batch_id")


class Batches:
    def __init__(self, store: BatchStore, files: FileStore, settings: Settings,
                 runner: Optional[BatchRunner] = None) -> None:
        self.store = store
        self.files = files
        self.settings = settings
        self.runner = runner

    async def create(self, req: BatchCreateRequest) -> dict[str, Any]:
        stored = await self.files.get(req.input_file_id)
        if stored is None:
            raise invalid_request(f"No file with id `{req.input_file_id}`.", param="input_file_id", code="file_not_found")
        if stored.purpose != "batch":
            raise invalid_request(f"The file `{stored.id}` has purpose `{stored.purpose}`; a batch's input file needs "
                                  "purpose `batch`.", param="input_file_id", code="invalid_value")
        batch_id, now = f"batch_{uuid.uuid4().hex[:24]}", time.time()
        # The limits are the creating process's, kept with the batch: whichever process drives it
        # applies the same ones.
        await self.store.create(batch_id, {
            "endpoint": req.endpoint, "input_file_id": stored.id, "completion_window": req.completion_window,
            "created_at": now, "expires_at": now + self.settings.batch_window_seconds,
            "metadata": json.dumps(req.metadata) if req.metadata is not None else "",
            "max_lines": self.settings.batch_max_lines, "total": 0, "completed": 0, "failed": 0,
        }, now)
        if self.runner is not None:
            self.runner.wake()
        return await self.get(batch_id)

    async def _record(self, batch_id: str) -> BatchRecord:
        raw = await self.store.get(batch_id)
        if raw is None:
            raise _not_found(batch_id)
        return BatchRecord(raw)

    async def get(self, batch_id: str) -> dict[str, Any]:
        return (await self._record(batch_id)).view()

    async def page(self, limit: int, after: Optional[str]) -> dict[str, Any]:
        rows, more = await self.store.page(limit, after)
        data = [BatchRecord(r).view() for r in rows]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": more}

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        moved = await self.store.move(batch_id, "cancelling", since=["validating", "in_progress"],
                                      fields={"cancelling_at": time.time()})
        if moved == "":
            raise _not_found(batch_id)
        if moved not in ("ok", "cancelling", "cancelled"):
            raise JobError(f"The batch `{batch_id}` is {moved} and can no longer be cancelled.", status_code=409,
                           type="invalid_request_error", code="batch_not_cancellable", param="batch_id")
        if self.runner is not None:
            self.runner.wake()
        return await self.get(batch_id)

    async def counts(self) -> dict[str, int]:
        """Batches per status (the ``llmhost_batches`` gauge)."""
        return await self.store.counts()

    async def recent(self) -> list[dict[str, Any]]:
        """The active batches and the last few finished ones, newest first (``GET /v1/status``)."""
        rows, _ = await self.store.page(STATUS_RECENT + len(await self.store.active()), None)
        views = [BatchRecord(r).view() for r in rows]
        finished = [v for v in views if v["status"] in FINAL_BATCH][:STATUS_RECENT]
        return [v for v in views if v["status"] not in FINAL_BATCH or v in finished]
