"""Batch records and the state of their lines in Redis (``/v1/batches``), moved by Lua scripts.

Per batch: a record hash (the OpenAI batch object's fields, ``total``/``completed``/``failed``, a
cursor per model group), its input lines (``lines``: index → raw JSONL line), one list of line
indices per model (``group:{n}``), the lines in flight (``inflight``: index → job id) and the
finished ones (``results``: index → the output line, prefixed ``1`` for the output file and ``0``
for the error file). A line's result is written with HSETNX, in the same script that takes it out
of ``inflight`` and counts it: whoever records it, and however often, it is recorded once. A
runner drives a batch only while it holds the batch's lease (SET NX PX, renewed), and claims a line
only with its lease and the group's cursor where it read it, so two runners never submit one line
twice. Every script's writes are one atomic step in the append-only file: after a Redis restart the
state is as of some moment, from which a runner resumes.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, NamedTuple, Optional, cast

import redis.asyncio as aioredis

from tasks.contract.records import job_key

from .files import page_ids

BATCH_KEY = "llmhost:batch:{}"
PART_KEY = "llmhost:batch:{}:{}"  # lease, lines, inflight, results, group:{n}
BATCHES_INDEX = "llmhost:batches"  # every batch id, scored by creation time
ACTIVE = "llmhost:batches:active"  # the ids of batches not in a final state: what runners look at
COUNTS = "llmhost:batches:count"  # status → number of batches
FINAL_BATCH = ("completed", "failed", "expired", "cancelled")

# KEYS[1] record, KEYS[2] COUNTS, KEYS[3] ACTIVE, KEYS[4..] deleted when the move is final; ARGV[1]
# new status, ARGV[2] the statuses it may come from (",a,b,"), ARGV[3] '1' when final, ARGV[4..]
# field/value pairs. Returns 'ok', else the current status ('' for an unknown batch).
MOVE_LUA = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return '' end
if not string.find(ARGV[2], ',' .. cur .. ',', 1, true) then return cur end
redis.call('HSET', KEYS[1], 'status', ARGV[1], unpack(ARGV, 4))
redis.call('HINCRBY', KEYS[2], cur, -1)
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
if ARGV[3] == '1' then
  redis.call('SREM', KEYS[3], redis.call('HGET', KEYS[1], 'id'))
  for i = 4, #KEYS do redis.call('DEL', KEYS[i]) end
end
return 'ok'
"""

# Claim the line at a group's cursor. KEYS: record, lease, inflight, results. ARGV: token, cursor
# field, the cursor as read, line, job id (in flight from now) or '' with ARGV[6] its result (it
# failed before it became a job) and ARGV[7] the counter. In flight, a line is "group|job id". -1 lease lost, -2 cursor moved, -3 the
# batch is no longer in progress.
ADVANCE_LUA = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
if redis.call('HGET', KEYS[1], 'status') ~= 'in_progress' then return -3 end
if tonumber(redis.call('HGET', KEYS[1], ARGV[2]) or '0') ~= tonumber(ARGV[3]) then return -2 end
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
elseif redis.call('HSETNX', KEYS[4], ARGV[4], ARGV[6]) == 1 then
  redis.call('HINCRBY', KEYS[1], ARGV[7], 1)
end
return 1
"""

# A line's job ended. KEYS: record, inflight, results, the job's record (dropped: its result now
# lives here). ARGV: line, its in-flight entry ("group|job id"), result, counter. 1 when recorded now, 0 when it already was or
# the line has another job.
RECORD_LUA = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[4])
if redis.call('HSETNX', KEYS[3], ARGV[1], ARGV[3]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[4], 1)
return 1
"""

# Lines that never ran (a cancel, the window passed). KEYS: record, results. ARGV[1] counter, then
# line/result pairs; lines already recorded are left as they are.
FILL_LUA = """
local n = 0
for i = 2, #ARGV, 2 do
  if redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]) == 1 then n = n + 1 end
end
if n > 0 then redis.call('HINCRBY', KEYS[1], ARGV[1], n) end
return n
"""

# Give a line a new job (its job record was never written, or lost). KEYS: lease, inflight.
REPLACE_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('HGET', KEYS[2], ARGV[2]) ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
return 1
"""

RENEW_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


class InFlight(NamedTuple):
    group: int
    job_id: str

    def encode(self) -> str:
        return f"{self.group}|{self.job_id}"

    @classmethod
    def decode(cls, value: str) -> "InFlight":
        group, job_id = value.split("|", 1)
        return cls(int(group), job_id)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else v


def part(batch_id: str, name: str) -> str:
    return PART_KEY.format(batch_id, name)


class BatchStore:
    def __init__(self, client: aioredis.Redis) -> None:
        self._r = client
        self._move = client.register_script(MOVE_LUA)
        self._advance = client.register_script(ADVANCE_LUA)
        self._record = client.register_script(RECORD_LUA)
        self._fill = client.register_script(FILL_LUA)
        self._replace = client.register_script(REPLACE_LUA)
        self._renew = client.register_script(RENEW_LUA)
        self._release = client.register_script(RELEASE_LUA)

    # --- records ------------------------------------------------------------------------------

    async def create(self, batch_id: str, fields: dict[str, Any], created: float) -> None:
        record: dict[Any, Any] = {"id": batch_id, "status": "validating", **fields}
        async with self._r.pipeline(transaction=True) as p:
            p.hset(BATCH_KEY.format(batch_id), mapping=record)
            p.zadd(BATCHES_INDEX, {batch_id: created})
            p.sadd(ACTIVE, batch_id)
            p.hincrby(COUNTS, "validating", 1)
            await p.execute()

    async def get(self, batch_id: str) -> Optional[dict[str, str]]:
        raw = await self._r.hgetall(BATCH_KEY.format(batch_id))
        return {_s(k): _s(v) for k, v in raw.items()} if raw else None

    async def move(self, batch_id: str, status: str, *, since: Iterable[str], fields: Optional[dict[str, Any]] = None,
                   groups: int = 0) -> str:
        final = status in FINAL_BATCH
        keys = [BATCH_KEY.format(batch_id), COUNTS, ACTIVE]
        if final:
            keys += [part(batch_id, n) for n in ("lease", "lines", "inflight", "results")]
            keys += [part(batch_id, f"group:{g}") for g in range(groups)]
        args: list[Any] = [status, "," + ",".join(since) + ",", "1" if final else "0"]
        for k, v in (fields or {}).items():
            args += [k, v if isinstance(v, (str, int, float)) else json.dumps(v)]
        return _s(await self._move(keys=keys, args=args))

    async def page(self, limit: int, after: Optional[str]) -> tuple[list[dict[str, str]], bool]:
        ids = await page_ids(self._r, BATCHES_INDEX, limit, after, newest_first=True)
        async with self._r.pipeline(transaction=False) as p:
            for batch_id in ids[:limit]:
                p.hgetall(BATCH_KEY.format(batch_id))
            rows = await p.execute()
        return [{_s(k): _s(v) for k, v in r.items()} for r in rows if r], len(ids) > limit

    async def active(self) -> list[str]:
        return sorted(_s(x) for x in await self._r.smembers(ACTIVE))

    async def counts(self) -> dict[str, int]:
        raw = await self._r.hgetall(COUNTS)
        return {_s(k): int(v) for k, v in raw.items()}

    # --- leases -------------------------------------------------------------------------------

    async def take_lease(self, batch_id: str, token: str, ms: int) -> bool:
        return bool(await self._r.set(part(batch_id, "lease"), token, nx=True, px=ms))

    async def renew_lease(self, batch_id: str, token: str, ms: int) -> bool:
        return bool(await self._renew(keys=[part(batch_id, "lease")], args=[token, ms]))

    async def release_lease(self, batch_id: str, token: str) -> None:
        await self._release(keys=[part(batch_id, "lease")], args=[token])

    # --- lines --------------------------------------------------------------------------------

    async def put_lines(self, batch_id: str, lines: dict[int, str]) -> None:
        """Input lines by index; writing one again writes the same (a takeover mid-validation)."""
        if lines:
            await self._r.hset(part(batch_id, "lines"), mapping=cast(dict[Any, Any], lines))

    async def start(self, batch_id: str, groups: list[list[int]], fields: dict[str, Any]) -> str:
        """Write the per-model line lists and move to ``in_progress`` in one transaction."""
        async with self._r.pipeline(transaction=True) as p:
            p.hset(BATCH_KEY.format(batch_id), "groups", len(groups))  # what a final move deletes
            for g, indices in enumerate(groups):
                key = part(batch_id, f"group:{g}")
                p.delete(key)
                for at in range(0, len(indices), 1000):
                    p.rpush(key, *indices[at:at + 1000])
            await p.execute()
        return await self.move(batch_id, "in_progress", since=["validating"], fields=fields)

    async def group_slice(self, batch_id: str, group: int, start: int, count: int) -> list[tuple[int, str]]:
        """(index, raw line) of ``count`` lines of one group from ``start``."""
        raw = await self._r.lrange(part(batch_id, f"group:{group}"), start, start + count - 1)
        indices = [int(x) for x in raw]
        if not indices:
            return []
        lines = await self._r.hmget(part(batch_id, "lines"), indices)
        return [(i, _s(line) or "") for i, line in zip(indices, lines)]

    async def lines(self, batch_id: str, indices: list[int]) -> list[Optional[str]]:
        raw = await self._r.hmget(part(batch_id, "lines"), indices)
        return [_s(x) if x is not None else None for x in raw]

    async def inflight(self, batch_id: str) -> dict[int, InFlight]:
        """Lines sent and not yet recorded: index → (its model group, its job id)."""
        raw = await self._r.hgetall(part(batch_id, "inflight"))
        return {int(k): InFlight.decode(_s(v)) for k, v in raw.items()}

    async def claim(self, batch_id: str, token: str, group: int, cursor: int, line: int, job_id: str = "",
                    result: str = "", counter: str = "failed") -> int:
        """The line at the group's cursor becomes ``job_id``'s (or, without one, ends as ``result``)."""
        keys = [BATCH_KEY.format(batch_id), part(batch_id, "lease"), part(batch_id, "inflight"), part(batch_id, "results")]
        value = InFlight(group, job_id).encode() if job_id else ""
        return int(await self._advance(keys=keys, args=[token, f"cursor:{group}", cursor, line, value, result, counter]))

    async def replace(self, batch_id: str, token: str, line: int, old: InFlight, job_id: str) -> int:
        keys = [part(batch_id, "lease"), part(batch_id, "inflight")]
        return int(await self._replace(keys=keys, args=[token, line, old.encode(), InFlight(old.group, job_id).encode()]))

    async def record(self, batch_id: str, line: int, job: InFlight, result: str, counter: str) -> bool:
        keys = [BATCH_KEY.format(batch_id), part(batch_id, "inflight"), part(batch_id, "results"), job_key(job.job_id)]
        return bool(await self._record(keys=keys, args=[line, job.encode(), result, counter]))

    async def fill(self, batch_id: str, results: dict[int, str], counter: str) -> int:
        args: list[Any] = [counter]
        for line, value in results.items():
            args += [line, value]
        return int(await self._fill(keys=[BATCH_KEY.format(batch_id), part(batch_id, "results")], args=args))

    async def results(self, batch_id: str, lines: list[int]) -> list[Optional[str]]:
        raw = await self._r.hmget(part(batch_id, "results"), lines)
        return [_s(x) if x is not None else None for x in raw]

    async def reserve_field(self, batch_id: str, field: str, value: str) -> str:
        """Set ``field`` once (e.g. the output file's id) and return what it holds."""
        key = BATCH_KEY.format(batch_id)
        await self._r.hsetnx(key, field, value)
        return _s(await self._r.hget(key, field))
