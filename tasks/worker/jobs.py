"""The worker's synchronous view of job records: start, finish, and the cheap cancel check."""

from __future__ import annotations

import time
from typing import Any

import redis

from tasks.contract.records import (
    HELD_KEY,
    OUTBOX,
    REAP_LUA,
    RESEND_LUA,
    TRANSITION_LUA,
    UNCLAIMED,
    decode_record,
    job_key,
    reap_args,
    transition_args,
)


class WorkerJobs:
    """The worker's synchronous view: start, finish, and the cheap cancel check."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._r = client
        self._ttl = ttl
        self._transition = client.register_script(TRANSITION_LUA)
        self._reap = client.register_script(REAP_LUA)
        self._resend = client.register_script(RESEND_LUA)

    def move(self, job_id: str, status: str, *, notify: tuple[str, str] | None = None, **fields: Any) -> str:
        """Move the job; when it moved and ``notify`` is (channel, message), publish that in the same
        atomic step (one round trip, and no event for a move that did not happen)."""
        keys, args = self._transition_call(job_id, status, notify, fields)
        res = self._transition(keys=keys, args=args)
        return res.decode() if isinstance(res, bytes) else res

    def move_on(self, pipe: Any, job_id: str, status: str, *, notify: tuple[str, str] | None = None,
                **fields: Any) -> None:
        """``move`` queued on ``pipe`` (the engine's step pipeline). By the script's digest alone:
        a Redis that lost it since this worker's claim answers NOSCRIPT for this command, and
        the caller then moves the job with ``move``, which loads it again."""
        keys, args = self._transition_call(job_id, status, notify, fields)
        pipe.evalsha(self._transition.sha, len(keys), *keys, *args)

    def _transition_call(self, job_id: str, status: str, notify: tuple[str, str] | None,
                         fields: dict[str, Any]) -> tuple[list[str], list[Any]]:
        """TRANSITION_LUA's keys (the job, the channel to notify) and arguments."""
        keys = [job_key(job_id)] + ([notify[0]] if notify else [])
        return keys, transition_args(status, self._ttl, fields, notify[1] if notify else "")

    def status(self, job_id: str) -> str | None:
        s = self._r.hget(job_key(job_id), "status")
        return s.decode() if isinstance(s, bytes) else s

    def holder(self, job_id: str) -> tuple[str | None, str | None]:
        """The job's status and the worker that holds it."""
        raw = self._r.hmget(job_key(job_id), "status", "worker")
        status, worker = (v.decode() if isinstance(v, bytes) else v for v in raw)
        return status, worker

    def attempt(self, job_id: str) -> int:
        """How many times the job was claimed, this claim included (TRANSITION_LUA counts them)."""
        return int(self._r.hget(job_key(job_id), "attempts") or 0)

    def publish(self, channel: str, event_json: str) -> None:
        self._r.publish(channel, event_json)

    def reap(self, job_id: str, dead_worker: str, max_attempts: int) -> tuple[str, dict[str, Any] | None]:
        """Decide a job of a dead worker (REAP_LUA); with 'requeue', also its record (to resend it)."""
        res = self._reap(keys=[job_key(job_id), HELD_KEY.format(dead_worker)], args=reap_args(dead_worker, max_attempts))
        outcome = res.decode() if isinstance(res, bytes) else res
        if outcome != "requeue":
            return outcome, None
        raw = self._r.hgetall(job_key(job_id))
        return outcome, decode_record(raw) if raw else None

    def sent(self, job_id: str, message: tuple[str, str] | None = None) -> None:
        """Take the job out of the outbox; with ``message`` (``task_message``), push it in the same
        transaction (a reaper that dies between the two must not leave it out of both)."""
        with self._r.pipeline(transaction=True) as p:
            if message is not None:
                p.lpush(*message)
            p.zrem(OUTBOX, job_id)
            p.execute()

    def unclaimed(self, before: float, limit: int = 500) -> list[tuple[str, dict[str, Any]]]:
        """Jobs in the unclaimed index (UNCLAIMED) since before ``before`` that look lost: still
        queued, taken by nobody, their queue empty; with their records. Jobs claimed or ended
        leave the index; jobs behind others in their queue stay (they are waiting their turn), with
        their time reset, so that a long backlog never hides the jobs after it."""
        found: list[Any] = self._r.zrangebyscore(UNCLAIMED, 0, before, start=0, num=limit)
        ids = [j.decode() if isinstance(j, bytes) else str(j) for j in found]
        if not ids:
            return []
        with self._r.pipeline(transaction=False) as p:
            for job_id in ids:
                p.hmget(job_key(job_id), "status", "worker", "queue")
            rows = [[v.decode() if isinstance(v, bytes) else v for v in row] for row in p.execute()]
        waiting = {job_id: queue for job_id, (status, worker, queue) in zip(ids, rows)
                   if status == "queued" and not worker and queue}
        if gone := [job_id for job_id in ids if job_id not in waiting]:
            self._r.zrem(UNCLAIMED, *gone)
        queues = sorted(set(waiting.values()))
        with self._r.pipeline(transaction=False) as p:
            for q in queues:
                p.llen(q)
            empty = {q for q, n in zip(queues, p.execute()) if not n}
        out, behind = [], []
        for job_id, queue in waiting.items():
            if queue not in empty:
                behind.append(job_id)
            elif raw := self._r.hgetall(job_key(job_id)):
                out.append((job_id, decode_record(raw)))
        if behind:  # looked at again a grace from now: the window moves on to the jobs after them
            self._r.zadd(UNCLAIMED, {job_id: time.time() for job_id in behind}, xx=True)
        return out

    def resend(self, job_id: str, message: tuple[str, str], now: float) -> bool:
        """Push ``message`` (``task_message``) again if the job is still unclaimed and its queue is
        empty (RESEND_LUA)."""
        return bool(self._resend(keys=[job_key(job_id), message[0]], args=[message[1], now]))

    def unsent(self, before: float, limit: int = 100) -> list[tuple[str, dict[str, Any]]]:
        """Outbox jobs older than ``before`` that still wait for their message (queued, taken by
        nobody), with their records; the others leave the outbox."""
        found: list[Any] = self._r.zrangebyscore(OUTBOX, 0, before, start=0, num=limit)
        stale = [j.decode() if isinstance(j, bytes) else str(j) for j in found]
        out = []
        for job_id in stale:
            raw = self._r.hgetall(job_key(job_id))
            rec = decode_record(raw) if raw else None
            if rec and rec.get("status") == "queued" and not rec.get("worker"):
                out.append((job_id, rec))
            else:
                self.sent(job_id)
        return out
