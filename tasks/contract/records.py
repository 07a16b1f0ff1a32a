"""The records both sides keep in Redis, and their names: job hashes (moved between states by one
Lua script, so a late ``finish`` never overwrites a cancel and a cancelled job that was still queued
is never started), worker presence hashes, the per-model queue names and the reply channels.

A job never leaves a final state (succeeded, failed, cancelled). Only names, shapes and the
script live here; the front's async view is :mod:`tasks.queue.store`, the worker's
:mod:`tasks.worker.jobs`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal

JOB_KEY = "llmhost:job:{}"
REPLY_CHANNEL = "llmhost:replies:{}"
WORKER_KEY = "llmhost:worker:{}"
# Every worker name ever announced (until a reaper has dealt with its death), and per worker the
# jobs it has taken and not yet ended: what must be delivered again if it dies.
WORKER_NAMES = "llmhost:workers"
HELD_KEY = "llmhost:held:{}"
# Jobs whose record says `queued` again but whose message may not have been sent yet (a reaper or a
# front died, or Redis failed, between REAP_LUA's requeue and the send): job id → when. Removed
# once the message is sent; the reapers resend what stays here too long (a duplicate message is
# harmless: a job is only started from `queued`). A new job never needs it: the front writes its
# record and its message in one transaction (JobStore.create).
OUTBOX = "llmhost:outbox"
OUTBOX_GRACE_SECONDS = 10.0
# Jobs whose message was sent and that no worker has claimed yet: job id → when it was (re)queued.
# Written by CREATE_LUA and REAP_LUA, left by the claim or any final move (TRANSITION_LUA). A worker
# pops a message (BRPOP) and claims its job a moment later; Celery's own ack emulation, which kept
# a copy meanwhile, costs a round trip per message each way and gives it back only after its
# visibility timeout (an hour). Instead, a reaper resends a job that stays here past the grace
# while its queue is empty (RESEND_LUA): its message died between the pop and the claim (a worker
# killed there, or Redis losing its last second). A duplicate is harmless: only `queued` starts.
UNCLAIMED = "llmhost:unclaimed"
UNCLAIMED_GRACE_SECONDS = 10.0
# A job's kept events (JobBase.events_ttl): a Redis Stream its worker writes, one entry per sequence
# and step: `a` the attempt (the job's `attempts` once claimed), `e` a delta Event's JSON, `end` when
# the sequence ended. Bounded; it expires with the job.
EVENTS_KEY = "llmhost:events:{}"
EVENTS_MAXLEN = 100_000

# Priority classes, in the order a worker takes them: sync and streaming requests, async jobs
# (/v1/jobs, background responses), the Batch API. Each has its own Celery queue per model.
JobClass = Literal["interactive", "background", "batch"]
CLASSES: tuple[JobClass, ...] = ("interactive", "background", "batch")
# Final statuses: a job never leaves one (the scripts below refuse).
FINAL = ("succeeded", "failed", "cancelled")

# KEYS[1] job hash, KEYS[2] optional channel; ARGV[1] new status; ARGV[2] fallback ttl; ARGV[3] the
# message to publish on KEYS[2] when the move happens; ARGV[4..] field/value pairs.
# The ttl the front chose at creation (field `ttl`) wins, so the front's setting decides expiry.
# Returns "ok" when the move happened, otherwise the current status ("" for an unknown job).
# A claim (-> running) counts an attempt and puts the job in its worker's held set; a final move
# takes it out of the held set of whichever worker had it.
TRANSITION_LUA = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return '' end
if cur == 'succeeded' or cur == 'failed' or cur == 'cancelled' then return cur end
if ARGV[1] == 'running' and cur ~= 'queued' then return cur end
redis.call('HSET', KEYS[1], 'status', ARGV[1], unpack(ARGV, 4))
local ttl = redis.call('HGET', KEYS[1], 'ttl') or ARGV[2]
redis.call('EXPIRE', KEYS[1], tonumber(ttl))
local worker = redis.call('HGET', KEYS[1], 'worker')
if worker then
  local held = 'llmhost:held:' .. worker
  if ARGV[1] == 'running' then
    redis.call('HINCRBY', KEYS[1], 'attempts', 1)
    redis.call('SADD', held, string.sub(KEYS[1], 13))
    redis.call('EXPIRE', held, tonumber(ttl))
  elseif ARGV[1] ~= 'queued' then
    redis.call('SREM', held, string.sub(KEYS[1], 13))
  end
end
if ARGV[1] ~= 'queued' then redis.call('ZREM', 'llmhost:unclaimed', string.sub(KEYS[1], 13)) end
if KEYS[2] and ARGV[3] ~= '' then redis.call('PUBLISH', KEYS[2], ARGV[3]) end
return 'ok'
"""

# The worker ARGV[1] is dead; decide job KEYS[1] (taken out of KEYS[2], that worker's held set):
#   'gone'    already final, expired, or now another worker's: nothing to do
#   'requeue' never started, or started but nothing reached a client: queued again (the caller
#             sends its message again from the stored payload)
#   'lost'    a stream had already shown tokens: failed with ARGV[3] (a half-sent answer cannot
#             be replayed invisibly)
#   'poison'  it was started ARGV[2] times and killed its worker each time: failed with ARGV[4]
REAP_LUA = """
redis.call('SREM', KEYS[2], string.sub(KEYS[1], 13))
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur or (cur ~= 'queued' and cur ~= 'running') then return 'gone' end
if redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1] then return 'gone' end
redis.call('HDEL', KEYS[1], 'worker')
if cur == 'queued' then
  redis.call('ZADD', 'llmhost:outbox', ARGV[5], string.sub(KEYS[1], 13))
  redis.call('ZADD', 'llmhost:unclaimed', ARGV[5], string.sub(KEYS[1], 13))
end
if cur == 'running' then
  if redis.call('HGET', KEYS[1], 'streamed') == '1' then
    redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[3], 'finished_at', ARGV[5])
    return 'lost'
  end
  if tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0') >= tonumber(ARGV[2]) then
    redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[4], 'finished_at', ARGV[5])
    return 'poison'
  end
  redis.call('HSET', KEYS[1], 'status', 'queued', 'requeued_at', ARGV[5])
  redis.call('ZADD', 'llmhost:outbox', ARGV[5], string.sub(KEYS[1], 13))
  redis.call('ZADD', 'llmhost:unclaimed', ARGV[5], string.sub(KEYS[1], 13))
  redis.call('HDEL', KEYS[1], 'started_at')
end
return 'requeue'
"""

# Resend the message ARGV[1] of job KEYS[1] (UNCLAIMED) when it is still queued, unclaimed, and its
# queue KEYS[2] is empty: nothing of it is left in Redis, so its message died between a worker's pop
# and its claim. Its time in the index starts again (ARGV[2]). 1 when sent; 0 when the job was
# claimed or ended (it leaves the index) or its queue still holds messages (looked at again later).
RESEND_LUA = """
local id = string.sub(KEYS[1], 13)
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' or redis.call('HEXISTS', KEYS[1], 'worker') == 1 then
  redis.call('ZREM', 'llmhost:unclaimed', id)
  return 0
end
if redis.call('LLEN', KEYS[2]) > 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('ZADD', 'llmhost:unclaimed', ARGV[2], id)
return 1
"""

# May a client see the kept events of attempt ARGV[1] of job KEYS[1]? 1 when that attempt is the
# job's current one; 0 when it was superseded (a requeued job is `queued` again, or claimed by a
# later attempt), and nobody ever sees its events. While it runs, a 1 marks the job `streamed`, as
# a live stream's first delta does: from then on a dead worker fails it (`worker_lost`, REAP_LUA)
# instead of running it again behind the back of a client who saw part of it.
ACCEPT_LUA = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur or cur == 'queued' then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0') ~= tonumber(ARGV[1]) then return 0 end
if cur == 'running' then redis.call('HSET', KEYS[1], 'streamed', 1) end
return 1
"""


def job_key(job_id: str) -> str:
    return JOB_KEY.format(job_id)


def events_key(job_id: str) -> str:
    return EVENTS_KEY.format(job_id)


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



def queue_name(model_id: str, klass: JobClass = "interactive") -> str:
    """The Celery queue of one model and priority class (interactive keeps the plain name)."""
    return f"llmhost.model.{model_id}" if klass == "interactive" else f"llmhost.model.{model_id}.{klass}"


def worker_lost_error(worker: str) -> dict[str, Any]:
    return {"message": f"The worker running this job ({worker}) stopped responding after it had sent part of "
                       "the answer.", "type": "server_error", "param": None, "code": "worker_lost", "status_code": 502}


def reap_args(dead_worker: str, max_attempts: int) -> list[Any]:
    """ARGV of REAP_LUA, the same for the front's and the workers' reapers."""
    return [dead_worker, max_attempts, json.dumps(worker_lost_error(dead_worker)), json.dumps(poison_error(max_attempts)),
            time.time()]


def poison_error(attempts: int) -> dict[str, Any]:
    return {"message": f"This job was started {attempts} times and each time its worker died; it is not retried "
                       "again.", "type": "server_error", "param": None, "code": "worker_crashed", "status_code": 500}


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
    family: str = ""  # the handler family serving the model (handlers/registry.py)
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
            family=d.get("family", ""),
            running=int(d.get("running") or 0), waiting=int(d.get("waiting") or 0),
            peak_batch=int(d.get("peak_batch") or 0),
        )
