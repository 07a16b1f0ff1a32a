"""A job's kept events (``JobBase.events_ttl``), read from the first by any API process, as often
as it likes: the same typed events as a :class:`~tasks.queue.client.JobWatch` (``TextDelta*``,
then one ``Finished`` or ``Failed``), but from the job's Redis Stream instead of pub/sub, so that a
stream can be resumed from another process after the first one died.

The worker tags each entry with its attempt (``tasks/contract/records.py``). A job delivered again
after its worker died holds two attempts' entries: only the current attempt's are handed out, as
ACCEPT_LUA decides atomically with the reapers, so a reader never shows a superseded run's text
and never shows anything twice; and once a reader has shown an attempt's text, that attempt is the
job's last (its worker's death fails the job ``worker_lost``, as for a live stream). The outcome
comes from the job record, the authority on how a job ended (a cancel, a reap). So every reader of
a job gets the same events in the same order, and a translator that numbers them gives every
reader the same numbers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, Generic, cast

from pydantic import ValidationError

from tasks.contract.errors import JobError, server_error
from tasks.contract.payloads import FINAL_STATUSES, TASK_GENERATE, Event
from tasks.contract.records import ACCEPT_LUA, events_key, job_key
from tasks.queue.client import JobClient
from tasks.queue.events import Failed, Finished, JobEvent, R, ReasoningDelta, TextDelta, delta_of, parse_result

log = logging.getLogger("llmhost.client")

BLOCK_MS = 1000  # a quiet stream: look at the job record this often (a dead worker, a cancel)
READ_COUNT = 256
END_POLLS = 50  # after a sequence's `end` entry the record turns final within moments: ask often
END_POLL_SECONDS = 0.02


class KeptEvents(Generic[R]):
    """``async for event in KeptEvents(jobs, job_id): ...``: reading never cancels the job (a
    background response goes on without its watchers)."""

    def __init__(self, jobs: JobClient, job_id: str, task: str = TASK_GENERATE) -> None:
        self.jobs = jobs
        self.job_id = job_id
        self.task = task
        self._r = jobs.redis
        self._key = events_key(job_id)
        self._accept = jobs.redis.register_script(ACCEPT_LUA)
        self._last = "0-0"  # the id of the last entry read
        self._attempt: int | None = None  # the attempt whose events are shown
        self._superseded: set[int] = set()
        self._ended = False  # the shown attempt's sequence ended: its outcome follows

    def __aiter__(self) -> AsyncIterator[JobEvent[R]]:
        return self._events()

    async def _events(self) -> AsyncIterator[JobEvent[R]]:
        while True:
            entries, deltas = await self._read(BLOCK_MS)
            for delta in deltas:
                yield delta
            if entries and not self._ended:
                continue  # it is running: no need to ask its record
            outcome = await self._outcome()
            if outcome is None:
                continue
            while True:  # what it kept before it ended and was not read yet
                entries, deltas = await self._read(None)
                for delta in deltas:
                    yield delta
                if not entries:
                    break
            yield outcome
            return

    async def _read(self, block_ms: int | None) -> tuple[int, list[TextDelta | ReasoningDelta]]:
        """The next entries (waiting up to ``block_ms`` for one): how many, and the deltas of the
        shown attempt among them."""
        got: Any = await self._r.xread({self._key: self._last}, count=READ_COUNT, block=block_ms)
        entries: list[tuple[bytes, dict[bytes, bytes]]] = got[0][1] if got else []
        deltas = []
        for entry_id, fields in entries:
            self._last = entry_id.decode()
            if (delta := await self._shown(fields)) is not None:
                deltas.append(delta)
        return len(entries), deltas

    async def _shown(self, fields: dict[bytes, bytes]) -> TextDelta | ReasoningDelta | None:
        """The entry's delta, if its attempt is the one shown; None otherwise."""
        attempt = int(fields.get(b"a", b"0"))
        if attempt != self._attempt:
            if self._attempt is not None or attempt in self._superseded:
                return None
            if not await self._accept(keys=[job_key(self.job_id)], args=[attempt]):
                self._superseded.add(attempt)
                return None
            self._attempt = attempt
        if b"end" in fields:
            self._ended = True
        raw = fields.get(b"e")
        if raw is None:
            return None
        try:
            event = Event.model_validate_json(raw)
        except ValidationError:
            log.warning("job %s: ignoring an unreadable kept event", self.job_id)
            return None
        return delta_of(event)

    async def _outcome(self) -> JobEvent[R] | None:
        """How the job ended, from its record; None while it has not (a dead worker's job is
        settled on the way, as a JobWatch does)."""
        for _ in range(END_POLLS if self._ended else 1):
            rec = await self.jobs.store.get(self.job_id)
            if rec is None:
                return Failed(JobError("The job of this response expired.", status_code=500, type="server_error"))
            rec = await self.jobs.reconcile(self.job_id, rec)
            if rec["status"] == "succeeded":
                return self._finished(rec.get("result"))
            if rec["status"] in FINAL_STATUSES:
                return Failed(JobError.from_dict(rec.get("error") or {}))
            if self._ended:
                await asyncio.sleep(END_POLL_SECONDS)
        return None

    def _finished(self, raw: Any) -> JobEvent[R]:
        try:
            return Finished(cast(R, parse_result(self.task, raw)))
        except ValidationError as e:
            log.error("job %s: unreadable result (%s)", self.job_id, e.errors()[:1])
            return Failed(server_error("The worker returned a result the API cannot read."))
