"""One step of one batch, by the process holding its lease: validate, keep its lines flowing, stop it.

Everything a step needs is read from Redis each time (tasks/queue/batches.py), so a step can be cut
short anywhere (the process dies, Redis restarts) and the next step, here or in the process that
takes the lease over, carries on from what was recorded. A line is claimed (its job id in
``inflight``, the cursor moved) before its job is sent; a claimed line whose job record is missing
was never sent (or lost with Redis's last second) and is sent again under a new job id. A finished
job's result is recorded once (HSETNX) and its job record dropped; a job that ran twice (a takeover
raced a send) is recorded for the job the line names, so it still lands once.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Optional

from tasks.contract.errors import JobError
from tasks.contract.settings import Settings
from tasks.queue.batches import BatchStore, InFlight
from tasks.queue.client import JobClient
from tasks.queue.files import FileStore

from .lease import Lease
from .lines import LineJob, LineJobs, counter, from_record, new_request_id, parse_line, refused, stop_reason
from .output import Output
from .record import BatchRecord
from .validation import InputCheck, LineError, errors_view

log = logging.getLogger("llmhost.batches")

SLICE = 64  # lines read from Redis at once when refilling
RECONCILE_SECONDS = 5.0  # how often in-flight jobs are checked for a dead worker or a lost message
LOST_AFTER = 30.0  # a queued job nobody took, its queue empty this long: its message is gone
TTL_MARGIN = 3600  # a line's job record outlives its batch's window by this much


class BatchDriver:
    def __init__(self, store: BatchStore, files: FileStore, lines: LineJobs, jobs: JobClient, settings: Settings) -> None:
        self.store = store
        self.files = files
        self.lines = lines
        self.jobs = jobs
        self.settings = settings
        self.output = Output(store, files)
        self._reconciled: dict[str, float] = {}

    async def step(self, b: BatchRecord, lease: Lease) -> None:
        if b.status == "validating":
            await self.validate(b, lease)
        elif b.status == "in_progress" and time.time() >= b.expires_at:
            await self.stop(b, "expired", lease)
        elif b.status == "in_progress":
            await self.advance(b, lease)
        elif b.status == "cancelling":
            await self.stop(b, "cancelled", lease)
        elif b.status == "finalizing":
            await self.output.finish(b, "completed")

    # --- validating ---------------------------------------------------------------------------

    async def validate(self, b: BatchRecord, lease: Lease) -> None:
        check = InputCheck(b.endpoint, b.max_lines)
        input_id = b.raw["input_file_id"]
        if await self.files.get(input_id) is None:
            check.errors.append(LineError("file_not_found", f"The input file `{input_id}` no longer exists."))
        else:
            pending: dict[int, str] = {}
            number = 0
            async for raw in self.files.lines(input_id):
                number += 1
                valid = check.feed(number, raw)
                if check.full:
                    break
                if valid is not None and not check.errors:
                    pending[valid.index] = valid.text
                if len(pending) >= 1000:
                    await lease.keep()
                    await self.store.put_lines(b.id, pending)
                    pending = {}
            check.finish()
            if await self.files.get(input_id) is None:  # deleted while it was read: what was read is not all
                check.errors.append(LineError("file_not_found", f"The input file `{input_id}` was deleted."))
            if not check.errors:
                await self.store.put_lines(b.id, pending)
        if check.errors:
            log.info("batch %s failed validation: %s", b.id, check.errors[0].message)
            await self.store.move(b.id, "failed", since=["validating"], groups=b.groups,
                                  fields={"errors": errors_view(check.errors), "failed_at": time.time()})
            return
        models = list(check.groups)
        await self.store.start(b.id, list(check.groups.values()), fields={
            "total": check.count, "models": models, "sizes": [len(g) for g in check.groups.values()],
            "groups": len(models), "in_progress_at": time.time()})

    # --- in_progress ----------------------------------------------------------------------------

    async def advance(self, b: BatchRecord, lease: Lease) -> None:
        left = await self.collect(b, await self.store.inflight(b.id), lease, stopping=None)
        busy = Counter(job.group for job in left.values())
        workers = Counter(w.model for w in await self.lines.gw.workers() if w.state == "ready")
        for g, model in enumerate(b.models):
            room = self.settings.batch_lines_per_worker * max(1, workers[model]) - busy[g]
            if room > 0 and b.cursor(g) < b.sizes[g] and not await self._refill(b, g, room, lease):
                return
        fresh = await self.store.get(b.id)
        if fresh and BatchRecord(fresh).done >= b.total:
            await self.store.move(b.id, "finalizing", since=["in_progress"], fields={"finalizing_at": time.time()})

    async def _refill(self, b: BatchRecord, g: int, room: int, lease: Lease) -> bool:
        """Claim and send up to ``room`` lines of group ``g``; False when this runner must stop."""
        cursor = b.cursor(g)
        while room > 0 and cursor < b.sizes[g]:
            await lease.keep()
            lines = await self.store.group_slice(b.id, g, cursor, min(room, SLICE))
            if not lines:
                log.error("batch %s: group %d has no line at %d of %d", b.id, g, cursor, b.sizes[g])
                return False
            for line, text in lines:
                became_job = await self._submit(b, g, cursor, line, text, lease)
                if became_job is None:
                    return False
                cursor += 1
                room -= int(became_job)
        return True

    async def _submit(self, b: BatchRecord, g: int, cursor: int, line: int, text: str, lease: Lease) -> Optional[bool]:
        """Claim one line and send its job (True), or record its refusal (False); None: the claim
        failed (lease lost, the cursor moved, the batch stopped)."""
        job, result = await self._prepare(b, text)
        if job is None:
            return False if await self.store.claim(b.id, lease.token, g, cursor, line, result=result) == 1 else None
        if await self.store.claim(b.id, lease.token, g, cursor, line, job_id=job.job.job_id) != 1:
            return None
        await self.lines.send(job, self._ttl(b))
        return True

    async def _prepare(self, b: BatchRecord, text: str) -> tuple[LineJob | None, str]:
        """A line's job, checked as the same request sent directly; or (None, its refusal)."""
        custom_id, body = parse_line(text)
        rid = new_request_id()
        try:
            return await self.lines.prepare(b.endpoint, custom_id, body, b.expires_at, rid), ""
        except JobError as e:
            return None, refused(custom_id, rid, e)

    def _ttl(self, b: BatchRecord) -> int:
        return int(max(0.0, b.expires_at - time.time())) + TTL_MARGIN

    # --- lines that ended -----------------------------------------------------------------------

    async def collect(self, b: BatchRecord, inflight: dict[int, InFlight], lease: Lease,
                      stopping: Optional[str]) -> dict[int, InFlight]:
        """Record every in-flight line whose job ended; send again those whose job was lost (or,
        when ``stopping``, end them as not run). Returns the lines still in flight."""
        items = sorted(inflight.items())
        statuses = await self.jobs.store.statuses([job.job_id for _, job in items])
        left: dict[int, InFlight] = {}
        reconcile = time.monotonic() - self._reconciled.get(b.id, 0.0) > RECONCILE_SECONDS
        for (line, job), status in zip(items, statuses):
            if status in ("queued", "running"):
                left[line] = job
                if reconcile:
                    await self._reconcile(job.job_id)
                continue
            rec = await self.jobs.store.get(job.job_id) if status else None
            if rec is not None and (stopping is None or not stop_reason(rec)):
                if stopping is None and rec["status"] == "cancelled":  # not by us: its send was interrupted
                    await self._resend(b, line, job, lease, left)
                    continue
                result = from_record(job.job_id, rec)
                if await self.store.record(b.id, line, job, result, counter(result)):
                    self.lines.count(rec)
            elif stopping:
                await self.store.record(b.id, line, job, await self.output.not_run_line(b, line, stopping), "failed")
            else:
                await self._resend(b, line, job, lease, left)
        if reconcile:
            self._reconciled[b.id] = time.monotonic()
        return left

    async def _reconcile(self, job_id: str) -> None:
        """A job whose worker died is delivered again (or settled); one whose message was lost is sent again."""
        rec = await self.jobs.store.get(job_id)
        if rec is not None and not await self.jobs.redeliver_if_lost(job_id, rec, LOST_AFTER):
            await self.jobs.reconcile(job_id, rec)

    async def _resend(self, b: BatchRecord, line: int, old: InFlight, lease: Lease, left: dict[int, InFlight]) -> None:
        """Send the line again under a new job, into ``left`` (its job record is gone, or was
        cancelled by an interrupted send); a body refused now is recorded as that refusal."""
        job, result = await self._prepare(b, (await self.store.lines(b.id, [line]))[0] or "")
        if job is None:
            await self.store.record(b.id, line, old, result, counter(result))
            return
        if await self.store.replace(b.id, lease.token, line, old, job.job.job_id) != 1:
            left[line] = old
            return
        log.info("batch %s: line %d sent again (job %s was lost)", b.id, line, old.job_id)
        left[line] = InFlight(old.group, job.job.job_id)
        await self.lines.send(job, self._ttl(b))

    # --- cancelled or expired -------------------------------------------------------------------

    async def stop(self, b: BatchRecord, status: str, lease: Lease) -> None:
        """Cancel what is in flight, keep what finished, end the rest as not run, write the files."""
        inflight = await self.store.inflight(b.id)
        reason = "the batch was cancelled" if status == "cancelled" else "the batch's completion window passed"
        for job in inflight.values():
            await self.jobs.cancel(job.job_id, reason)
        if await self.collect(b, inflight, lease, stopping=status):
            return  # a job would not settle: again next step
        await self.output.fill_not_run(b, status, lease)
        await self.output.finish(b, status)
