"""The front pushes each job's Celery message itself, in its record's transaction
(tasks.contract.celery_app.task_message): it must be the message Celery's own producer pushes, or
workers would read it differently (every e2e test then also runs jobs sent this way)."""

from __future__ import annotations

import asyncio
import base64
import json

from tasks.contract.celery_app import create_celery, task_message
from tasks.contract.settings import Settings


def _kombu_pushed(r, queue: str) -> dict:
    [raw] = r.lrange(queue, 0, -1)
    r.delete(queue)
    return json.loads(raw)


def test_the_message_is_the_one_celerys_producer_pushes(stack):
    celery = create_celery(Settings(redis_url=stack.redis_url))
    try:
        _compare(celery, stack.redis)
    finally:
        celery.close()


def _compare(celery, r) -> None:
    queue, task, job_id = "llmhost.test.message-format", "llmhost.generate", "job-format-1"
    payload = {"job_id": job_id, "model": "m", "text": "é \u2603 \"quoted\""}

    celery.send_task(task, args=[payload], task_id=job_id, queue=queue, argsrepr=f"<{task} {job_id}>",
                     kwargsrepr="{}")
    theirs = _kombu_pushed(r, queue)
    key, data = task_message(celery, task, payload, job_id, queue)
    ours = json.loads(data)

    assert key == queue
    assert set(ours) == set(theirs)
    assert json.loads(base64.b64decode(ours["body"])) == json.loads(base64.b64decode(theirs["body"])) \
        == [[payload], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    assert {k: v for k, v in ours.items() if k not in ("body", "properties")} \
        == {k: v for k, v in theirs.items() if k not in ("body", "properties")}
    unique = {"delivery_tag"}  # a fresh uuid per message
    assert {k: v for k, v in ours["properties"].items() if k not in unique} \
        == {k: v for k, v in theirs["properties"].items() if k not in unique}
    assert ours["properties"]["delivery_tag"] != theirs["properties"]["delivery_tag"]


def test_a_job_is_recorded_with_its_message_or_not_at_all(stack):
    """JobStore.create writes the record and pushes the message in one step; at the queue's depth
    limit it writes neither and answers the depth."""
    import redis.asyncio as aioredis

    from tasks.contract.records import job_key
    from tasks.queue.store import JobStore

    queue = "llmhost.test.depth-limit"
    r = stack.redis
    r.delete(queue)

    async def create(job_id: str, max_depth: int) -> int | None:
        client = aioredis.Redis.from_url(stack.redis_url)
        try:
            return await JobStore(client, 60).create(job_id, "/v1/completions", "m", {"k": 1}, task="t", queue=queue,
                                                     klass="interactive", payload="{}", max_depth=max_depth,
                                                     message=(queue, f"message of {job_id}"))
        finally:
            await client.aclose()

    assert asyncio.run(create("job-depth-1", 2)) is None
    assert asyncio.run(create("job-depth-2", 2)) is None
    assert asyncio.run(create("job-depth-3", 2)) == 2  # the limit: refused
    assert asyncio.run(create("job-depth-4", 0)) is None  # no limit
    assert r.lrange(queue, 0, -1) == [b"message of job-depth-4", b"message of job-depth-2", b"message of job-depth-1"]
    assert not r.exists(job_key("job-depth-3"))
    rec = r.hgetall(job_key("job-depth-1"))
    assert rec[b"status"] == b"queued" and rec[b"queue"] == queue.encode() and rec[b"meta"] == b'{"k": 1}'
    assert 0 < r.ttl(job_key("job-depth-1")) <= 60
    r.delete(queue)


def test_the_front_reads_presence_from_the_workers_set_and_refreshes_it_off_the_request(stack, monkeypatch):
    """Live workers are the announced names whose hash has not expired (no keyspace scan); a view
    over half a second old is answered at once and refreshed in the background."""
    import redis.asyncio as aioredis

    from tasks.contract.records import WORKER_KEY, WORKER_NAMES
    from tasks.queue import client as queue_client
    from tasks.queue.client import JobClient

    monkeypatch.setattr(queue_client, "PRESENCE_STALE_SECONDS", 3600.0)  # a slow machine must not read it inline
    r = stack.redis
    model = "test/presence-model"
    for name in ("presence-live", "presence-dead"):
        r.hset(WORKER_KEY.format(name), mapping={"name": name, "model": model, "state": "ready"})
        r.sadd(WORKER_NAMES, name)
    r.delete(WORKER_KEY.format("presence-dead"))  # its heartbeat expired; a reaper has not seen it yet
    for i in range(300):  # other keys (job records) must not be walked
        r.set(f"llmhost:presence-filler-{i}", "x", ex=60)

    async def views() -> tuple[list[str], list[str], list[str]]:
        client = aioredis.Redis.from_url(stack.redis_url)
        jobs = JobClient(client, create_celery(Settings(redis_url=stack.redis_url)), job_ttl=60)
        try:
            first = [w.name for w in await jobs.workers() if w.model == model]
            r.hset(WORKER_KEY.format("presence-new"), mapping={"name": "presence-new", "model": model, "state": "ready"})
            r.sadd(WORKER_NAMES, "presence-new")
            jobs._presence = (jobs._presence[0] - 1.0, jobs._presence[1])  # half a second old and more
            stale = [w.name for w in await jobs.workers() if w.model == model]  # answered from the view
            assert jobs._presence_read is not None
            await jobs._presence_read
            return first, stale, [w.name for w in await jobs.workers() if w.model == model]
        finally:
            await client.aclose()

    try:
        first, stale, refreshed = asyncio.run(views())
        assert first == stale == ["presence-live"]
        assert sorted(refreshed) == ["presence-live", "presence-new"]
    finally:
        for name in ("presence-live", "presence-new"):
            r.delete(WORKER_KEY.format(name))
