"""Jobs outlive their worker: a thread in every worker delivers again what a dead worker held.

Why our own and not Celery's visibility timeout: Redis cannot tell a dead worker from a long job, so
a short visibility timeout runs long jobs twice and a long one leaves a dead worker's jobs waiting
for an hour. Heartbeats do tell (tasks/worker/announcer.py): a worker whose presence key expired is
dead. Each worker keeps the set of jobs it received and has not ended (``llmhost:held:{name}``,
kept by the Lua scripts of tasks/contract/records.py); a reaper walks the held set of every dead
worker and lets REAP_LUA decide each job atomically (so two reapers never deliver one twice):
requeued from its stored payload when nothing of it reached a client, failed when a stream had
already shown tokens (``worker_lost``) or when it was started ``max_attempts`` times (a poison
request). The front does the same for a job it waits on (``JobClient.reconcile``), so a model with
no live worker left still settles its waiting clients.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from celery import Celery

from tasks.contract.celery_app import record_message
from tasks.contract.records import (
    HELD_KEY,
    OUTBOX_GRACE_SECONDS,
    UNCLAIMED_GRACE_SECONDS,
    WORKER_KEY,
    WORKER_NAMES,
)
from tasks.worker.jobs import WorkerJobs

log = logging.getLogger("llmhost.reaper")

# A dead worker's name leaves the set the front reads presence from only if its key is still gone.
FORGET_LUA = """
if redis.call('EXISTS', KEYS[2]) == 0 then return redis.call('SREM', KEYS[1], ARGV[1]) end
return 0
"""


class Reaper:
    def __init__(self, client: redis.Redis, jobs: WorkerJobs, celery: Celery, me: str, max_attempts: int,
                 interval: float) -> None:
        self._r = client
        self._jobs = jobs
        self._celery = celery
        self._me = me
        self._max_attempts = max_attempts
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._forget = client.register_script(FORGET_LUA)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="llmhost-reaper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.sweep()
            except redis.RedisError as e:
                log.warning("reaper: Redis unavailable (%s); retrying", e)
            except Exception:  # noqa: BLE001 - the reaper must keep running
                log.exception("reaper sweep failed")

    def dead_workers(self) -> list[str]:
        names = sorted(n.decode() if isinstance(n, bytes) else n for n in self._r.smembers(WORKER_NAMES))
        names = [n for n in names if n != self._me]
        if not names:
            return []
        with self._r.pipeline(transaction=False) as p:
            for n in names:
                p.exists(WORKER_KEY.format(n))
            alive = p.execute()
        return [n for n, up in zip(names, alive) if not up]

    def sweep(self) -> dict[str, int]:
        """One pass over every dead worker's held jobs, then over the outbox and the unclaimed
        index; returns how many ended each way ('resent': an outbox job whose message had not been
        sent; 'unclaimed': a job whose message was popped and never claimed)."""
        counts: dict[str, int] = {}
        for dead in self.dead_workers():
            for raw in self._r.smembers(HELD_KEY.format(dead)):
                job_id = raw.decode() if isinstance(raw, bytes) else raw
                outcome, rec = self._jobs.reap(job_id, dead, self._max_attempts)
                if outcome == "requeue" and rec:
                    self._send(job_id, rec)
                counts[outcome] = counts.get(outcome, 0) + 1
                if outcome != "gone":
                    log.warning("job %s of dead worker %s: %s", job_id, dead, outcome, extra={"job_id": job_id})
            # Its held set is empty now (a job it got meanwhile would be in a live worker's set).
            # Forgotten only if still gone: a worker back from a pause stays known to the front.
            self._forget(keys=[WORKER_NAMES, WORKER_KEY.format(dead)], args=[dead])
        for job_id, rec in self._jobs.unsent(time.time() - OUTBOX_GRACE_SECONDS):
            self._send(job_id, rec)
            counts["resent"] = counts.get("resent", 0) + 1
            log.warning("job %s was recorded but its message not sent; sent now", job_id, extra={"job_id": job_id})
        now = time.time()
        for job_id, rec in self._jobs.unclaimed(now - UNCLAIMED_GRACE_SECONDS):
            message = record_message(self._celery, job_id, rec)
            if message is not None and self._jobs.resend(job_id, message, now):
                counts["unclaimed"] = counts.get("unclaimed", 0) + 1
                log.warning("job %s: its message was taken and never claimed; sent again", job_id,
                            extra={"job_id": job_id})
        return counts

    def _send(self, job_id: str, rec: dict) -> None:
        self._jobs.sent(job_id, record_message(self._celery, job_id, rec))
