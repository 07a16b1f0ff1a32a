"""Uploaded and produced files (``/v1/files``) kept in Redis: a record hash and the bytes in chunks.

Why Redis and not a shared volume: Redis is the one store that every API process (on however many
machines) and the batch runner inside them already reach, and it is already durable where the
queue is (`make run` and compose keep an append-only file on a volume). A volume would have to be
mounted read-write by every API replica (a ReadWriteMany share across machines), and a file
written there and its record written here could disagree after a crash; here a file appears whole
or not at all (its chunks are written under a temporary key, then renamed and recorded in one
MULTI). The cost is memory: files live in Redis's RAM until deleted, so ``LLMHOST_MAX_FILE_BYTES``
(200 MiB, as OpenAI) bounds each one. Chunks of 1 MiB keep every command small: an upload or a
download never blocks Redis on one large value, and neither side holds a whole file in memory.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import AsyncIterable, AsyncIterator, Optional, cast

import redis.asyncio as aioredis

FILE_KEY = "llmhost:file:{}"
DATA_KEY = "llmhost:file:{}:data"
FILES_INDEX = "llmhost:files"  # every file id, scored by creation time
PURPOSE_INDEX = "llmhost:files:{}"  # the same per purpose
CHUNK_BYTES = 1024 * 1024
PARTIAL_TTL = 3600  # an upload that died half-way cleans itself up


class FileTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class StoredFile:
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str

    @classmethod
    def from_hash(cls, raw: dict) -> "StoredFile":
        d = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
             for k, v in raw.items()}
        return cls(d["id"], int(d["bytes"]), int(d["created_at"]), d["filename"], d["purpose"])


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex[:24]}"


class FileStore:
    def __init__(self, client: aioredis.Redis) -> None:
        self._r = client

    async def put(self, chunks: AsyncIterable[bytes], *, filename: str, purpose: str, limit: int,
                  file_id: Optional[str] = None) -> StoredFile:
        """Store a file from its chunks; ``file_id`` given: replace that file (a batch's output written
        again after a takeover). Raises :class:`FileTooLarge` past ``limit`` bytes, keeping nothing."""
        file_id = file_id or new_file_id()
        partial = f"{DATA_KEY.format(file_id)}:partial:{uuid.uuid4().hex}"
        size, pending = 0, b""
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise FileTooLarge(limit)
                pending += chunk
                while len(pending) >= CHUNK_BYTES:
                    await self._append(partial, pending[:CHUNK_BYTES])
                    pending = pending[CHUNK_BYTES:]
            if pending or not size:
                await self._append(partial, pending)
        except BaseException:
            await self._r.delete(partial)
            raise
        stored = StoredFile(file_id, size, int(time.time()), filename, purpose)
        async with self._r.pipeline(transaction=True) as p:
            p.rename(partial, DATA_KEY.format(file_id))
            p.persist(DATA_KEY.format(file_id))
            p.hset(FILE_KEY.format(file_id), mapping={"id": file_id, "bytes": size, "created_at": stored.created_at,
                                                      "filename": filename, "purpose": purpose})
            p.zadd(FILES_INDEX, {file_id: time.time()})
            p.zadd(PURPOSE_INDEX.format(purpose), {file_id: time.time()})
            await p.execute()
        return stored

    async def _append(self, key: str, chunk: bytes) -> None:
        async with self._r.pipeline(transaction=False) as p:
            p.rpush(key, chunk)
            p.expire(key, PARTIAL_TTL)
            await p.execute()

    async def get(self, file_id: str) -> Optional[StoredFile]:
        raw = await self._r.hgetall(FILE_KEY.format(file_id))
        return StoredFile.from_hash(raw) if raw else None

    async def chunks(self, file_id: str) -> AsyncIterator[bytes]:
        """The file's bytes, one chunk per round trip (empty when it is gone)."""
        key, n = DATA_KEY.format(file_id), 0
        while True:
            chunk = await self._r.lindex(key, n)
            if chunk is None:
                return
            n += 1
            if chunk:
                yield chunk if isinstance(chunk, bytes) else chunk.encode()

    async def lines(self, file_id: str) -> AsyncIterator[bytes]:
        """The file's lines (without their ending), whichever chunks they straddle."""
        tail = b""
        async for chunk in self.chunks(file_id):
            parts = (tail + chunk).split(b"\n")
            tail = parts.pop()
            for line in parts:
                yield line
        if tail:
            yield tail

    async def delete(self, file_id: str) -> bool:
        stored = await self.get(file_id)
        if stored is None:
            return False
        async with self._r.pipeline(transaction=True) as p:
            p.delete(FILE_KEY.format(file_id), DATA_KEY.format(file_id))
            p.zrem(FILES_INDEX, file_id)
            p.zrem(PURPOSE_INDEX.format(stored.purpose), file_id)
            await p.execute()
        return True

    async def page(self, *, purpose: Optional[str], limit: int, after: Optional[str],
                   newest_first: bool) -> tuple[list[StoredFile], bool]:
        """Up to ``limit`` files after the id ``after`` (in the order asked), and whether more follow."""
        index = PURPOSE_INDEX.format(purpose) if purpose else FILES_INDEX
        ids = await page_ids(self._r, index, limit, after, newest_first)
        more = len(ids) > limit
        async with self._r.pipeline(transaction=False) as p:
            for file_id in ids[:limit]:
                p.hgetall(FILE_KEY.format(file_id))
            rows = await p.execute()
        return [StoredFile.from_hash(r) for r in rows if r], more


async def page_ids(r: aioredis.Redis, index: str, limit: int, after: Optional[str], newest_first: bool) -> list[str]:
    """``limit + 1`` ids of a sorted-set index after ``after`` (one more tells whether more follow);
    an unknown ``after`` starts from the beginning, as a vanished cursor should not end the list."""
    start = 0
    if after:
        rank = await (r.zrevrank(index, after) if newest_first else r.zrank(index, after))
        start = 0 if rank is None else cast(int, rank) + 1
    stop = start + limit
    raw = await (r.zrevrange(index, start, stop) if newest_first else r.zrange(index, start, stop))
    return [x.decode() if isinstance(x, bytes) else x for x in cast(list, raw)]
