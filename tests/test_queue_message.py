"""The front pushes each job's Celery message itself, in its record's transaction
(tasks.contract.celery_app.task_message): it must be the message Celery's own producer pushes, or
workers would read it differently (every e2e test then also runs jobs sent this way)."""

from __future__ import annotations

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
    r = stack.redis
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
    celery.close()
