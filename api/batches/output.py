"""A batch's end: lines that never ran, then its output and error files, then its final status.

The files are written from the recorded results, in input order, under ids reserved once in the
batch's record: a process that dies while writing them leaves the batch ``finalizing`` (or
``cancelling``), and whoever takes it over writes the same files again under the same ids. Nothing
is appended anywhere, so no line can reach a file twice.
"""

from __future__ import annotations

import logging
import time
from typing import AsyncIterator, Optional

from tasks.queue.batches import BatchStore
from tasks.queue.files import FileStore, new_file_id

from .lease import Lease
from .lines import ERROR, OK, not_run, parse_line
from .record import BatchRecord

log = logging.getLogger("llmhost.batches")

READ = 1000  # results read from Redis at once
UNBOUNDED = 1 << 62  # output files have no size limit: they are as large as the work asked for
NOT_RUN = {
    "cancelled": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
}
# Where each final status is reached from.
SINCE = {"completed": ["finalizing"], "cancelled": ["cancelling"], "expired": ["in_progress"]}


class Output:
    def __init__(self, store: BatchStore, files: FileStore) -> None:
        self.store = store
        self.files = files

    async def not_run_line(self, b: BatchRecord, line: int, status: str) -> str:
        text = (await self.store.lines(b.id, [line]))[0]
        return not_run(parse_line(text)[0] if text else "", *NOT_RUN[status])

    async def fill_not_run(self, b: BatchRecord, status: str, lease: Lease) -> None:
        """Every line without a result ends as not run (``batch_cancelled`` / ``batch_expired``)."""
        for start in range(0, b.total, READ):
            await lease.keep()
            indices = list(range(start, min(b.total, start + READ)))
            missing = [i for i, r in zip(indices, await self.store.results(b.id, indices)) if r is None]
            if missing:
                texts = await self.store.lines(b.id, missing)
                await self.store.fill(b.id, {i: not_run(parse_line(t)[0] if t else "", *NOT_RUN[status])
                                             for i, t in zip(missing, texts)}, "failed")

    async def finish(self, b: BatchRecord, status: str) -> None:
        fresh = await self.store.get(b.id)
        if fresh is None:
            return
        b = BatchRecord(fresh)
        out_id = await self._write(b, OK, "_output_file", "output") if int(b.raw.get("completed") or 0) else None
        err_id = await self._write(b, ERROR, "_error_file", "error") if int(b.raw.get("failed") or 0) else None
        moved = await self.store.move(b.id, status, since=SINCE[status], groups=b.groups, fields={
            "output_file_id": out_id or "", "error_file_id": err_id or "", f"{status}_at": time.time()})
        if moved == "ok":
            log.info("batch %s %s: %s lines, %s completed, %s failed", b.id, status, b.total,
                     b.raw.get("completed") or 0, b.raw.get("failed") or 0)

    async def _write(self, b: BatchRecord, flag: str, field: str, name: str) -> str:
        file_id = await self.store.reserve_field(b.id, field, new_file_id())
        await self.files.put(self._lines(b, flag), filename=f"{b.id}_{name}.jsonl", purpose="batch_output",
                             limit=UNBOUNDED, file_id=file_id)
        return file_id

    async def _lines(self, b: BatchRecord, flag: str) -> AsyncIterator[bytes]:
        for start in range(0, b.total, READ):
            indices = list(range(start, min(b.total, start + READ)))
            rows: list[Optional[str]] = await self.store.results(b.id, indices)
            for i, r in zip(indices, rows):
                if r is None:
                    log.error("batch %s: line %d has no result at the end", b.id, i)
            yield "".join(r[1:] + "\n" for r in rows if r and r[0] == flag).encode()
