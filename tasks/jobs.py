"""Job records in Redis: one hash per job, moved between states atomically by one Lua script.

Both sides write here: the front creates and cancels, the worker starts and finishes. A job only
leaves a final state (succeeded, failed, cancelled) never, so a late ``finish`` cannot overwrite a
cancel, and a cancelled job that was still queued is never started.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
import redis.asyncio as aioredis

JOB_KEY = "llmhost:job:{}"
REPLY_CHANNEL = "llmhost:replies:{}"

# KEYS[1] job hash, KEYS[2] optional channel; ARGV[1] new status; ARGV[2] fallback ttl; ARGV[3] the
# message to publish on KEYS[2] when the move happens; ARGV[4..] field/value pairs.
# The ttl the front chose at creation (field `ttl`) wins, so the front's setting decides expiry.
# Returns "ok" when the move happened, otherwise the current status ("" for an unknown job).
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return '' end
if cur == 'succeeded' or cur == 'failed' or cur == 'cancelled' then return cur end
if ARGV[1] == 'running' and cur ~= 'queued' then return cur end
redis.call('HSET', KEYS[1], 'status', ARGV[1], unpack(ARGV, 4))
local ttl = redis.call('HGET', KEYS[1], 'ttl') or ARGV[2]
redis.call('EXPIRE', KEYS[1], tonumber(ttl))
if KEYS[2] and ARGV[3] ~= '' then redis.call('PUBLISH', KEYS[2], ARGV[3]) end
return 'ok'
"""


def job_key(job_id: str) -> str:
    return JOB_KEY.format(job_id)


def reply_channel(instance_id: str) -> str:
    """The one channel an API process listens on for the events of all the jobs it waits for."""
    return REPLY_CHANNEL.format(instance_id)


def _transition_args(status: str, ttl: int, fields: dict[str, Any], message: str = "") -> list[Any]:
    args: list[Any] = [status, ttl, message]
    for k, v in fields.items():
        args += [k, v if isinstance(v, (str, int, float)) else json.dumps(v)]
    return args


def decode_record(raw: dict) -> dict[str, Any]:
    """Redis hash → dict with JSON fields parsed."""
    rec = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}
    for k in ("result", "error", "meta"):
        if rec.get(k):
            rec[k] = json.loads(rec[k])
    for k in ("created_at", "started_at", "finished_at"):
        if rec.get(k):
            rec[k] = float(rec[k])
    return rec


class JobStore:
    """The front's async view of job records."""

    def __init__(self, client: aioredis.Redis, ttl: int) -> None:
        self._r = client
        self._ttl = ttl
        self._transition = client.register_script(_TRANSITION)

    async def create(self, job_id: str, endpoint: str, model: str, meta: dict[str, Any]) -> float:
        created = time.time()
        key = job_key(job_id)
        async with self._r.pipeline(transaction=True) as p:
            p.hset(key, mapping={
                "status": "queued", "endpoint": endpoint, "model": model,
                "created_at": created, "meta": json.dumps(meta), "ttl": self._ttl,
            })
            p.expire(key, self._ttl)
            await p.execute()
        return created

    async def get(self, job_id: str) -> dict[str, Any] | None:
        raw = await self._r.hgetall(job_key(job_id))
        return decode_record(raw) if raw else None

    async def move(self, job_id: str, status: str, **fields: Any) -> str:
        fields.setdefault("finished_at", time.time())
        res = await self._transition(keys=[job_key(job_id)], args=_transition_args(status, self._ttl, fields))
        return res.decode() if isinstance(res, bytes) else res


class WorkerJobs:
    """The worker's synchronous view: start, finish, and the cheap cancel check."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._r = client
        self._ttl = ttl
        self._transition = client.register_script(_TRANSITION)

    def move(self, job_id: str, status: str, *, notify: tuple[str, str] | None = None, **fields: Any) -> str:
        """Move the job; when it moved and ``notify`` is (channel, message), publish that in the same
        atomic step (one round trip, and no event for a move that did not happen)."""
        keys = [job_key(job_id)] + ([notify[0]] if notify else [])
        res = self._transition(keys=keys, args=_transition_args(status, self._ttl, fields, notify[1] if notify else ""))
        return res.decode() if isinstance(res, bytes) else res

    def status(self, job_id: str) -> str | None:
        s = self._r.hget(job_key(job_id), "status")
        return s.decode() if s else None

    def publish(self, channel: str, event_json: str) -> None:
        self._r.publish(channel, event_json)
