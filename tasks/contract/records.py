"""The records both sides keep in Redis, and their names: job hashes (moved between states by one
Lua script, so a late ``finish`` never overwrites a cancel and a cancelled job that was still queued
is never started), worker presence hashes, the per-model queue names and the reply channels.

A job never leaves a final state (succeeded, failed, cancelled). Only names, shapes and the
script live here; the front's async view is :mod:`tasks.queue.store`, the worker's
:mod:`tasks.worker.jobs`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

JOB_KEY = "llmhost:job:{}"
REPLY_CHANNEL = "llmhost:replies:{}"
WORKER_KEY = "llmhost:worker:{}"
WORKER_PATTERN = "llmhost:worker:*"

# KEYS[1] job hash, KEYS[2] optional channel; ARGV[1] new status; ARGV[2] fallback ttl; ARGV[3] the
# message to publish on KEYS[2] when the move happens; ARGV[4..] field/value pairs.
# The ttl the front chose at creation (field `ttl`) wins, so the front's setting decides expiry.
# Returns "ok" when the move happened, otherwise the current status ("" for an unknown job).
TRANSITION_LUA = """
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


def transition_args(status: str, ttl: int, fields: dict[str, Any], message: str = "") -> list[Any]:
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



def queue_name(model_id: str) -> str:
    """The Celery queue that the workers of one model consume."""
    return f"llmhost.model.{model_id}"


@dataclass
class WorkerInfo:
    name: str
    model: str
    state: str  # loading | ready | failed
    device: str = ""
    dtype: str = ""
    pid: int = 0
    host: str = ""
    started_at: float = 0.0
    heartbeat_at: float = 0.0
    error: str = ""
    kind: str = ""  # chat | embedding
    running: int = 0
    waiting: int = 0
    peak_batch: int = 0

    @classmethod
    def from_hash(cls, raw: dict) -> "WorkerInfo":
        d = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}
        return cls(
            name=d.get("name", ""), model=d.get("model", ""), state=d.get("state", ""),
            device=d.get("device", ""), dtype=d.get("dtype", ""), pid=int(d.get("pid") or 0),
            host=d.get("host", ""), started_at=float(d.get("started_at") or 0),
            heartbeat_at=float(d.get("heartbeat_at") or 0), error=d.get("error", ""), kind=d.get("kind", ""),
            running=int(d.get("running") or 0), waiting=int(d.get("waiting") or 0),
            peak_batch=int(d.get("peak_batch") or 0),
        )
