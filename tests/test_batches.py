"""The Batch API end to end with the openai SDK: upload a JSONL file, create a batch, poll it, download
its output and error files; bad lines, failed validation, cancel, expiry, embeddings; and a batch
that outlives a SIGKILLed worker, a SIGKILLed API process and a SIGKILLed Redis."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import openai
import pytest
import redis as redis_lib
import redis.asyncio as aioredis

from api.batches.validation import InputCheck
from tasks.contract.celery_app import create_celery
from tasks.contract.payloads import GenerateJob
from tasks.contract.settings import Settings
from tasks.queue.client import JobClient
from tasks.supervisor.redis_server import RedisServer
from tests.conftest import MINILM, TINY_CHATML, TINY_GENERIC, TINY_MISTRAL, Stack
from tests.test_e2e_durability import wait_until

CHAT = "/v1/chat/completions"


def jsonl(lines: list) -> bytes:
    return b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines)


def chat_line(custom_id: str, content: str, model: str = TINY_CHATML, **extra) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 8,
            **extra}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


def create(client: openai.OpenAI, lines: list, endpoint: str = CHAT, **extra):
    f = client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h", **extra)


def wait_for(client: openai.OpenAI, batch_id: str, statuses: tuple[str, ...], timeout: float = 180):
    return wait_until(lambda: (lambda b: b if b.status in statuses else None)(client.batches.retrieve(batch_id)),
                      timeout, f"batch {batch_id} to be {statuses}")


def lines_of(client: openai.OpenAI, file_id) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines()]


def test_files_are_uploaded_listed_read_and_deleted(client):
    data = jsonl([chat_line("a", "hi")])
    f = client.files.create(file=("mine.jsonl", data), purpose="batch")
    assert (f.object, f.bytes, f.filename, f.purpose, f.status) == ("file", len(data), "mine.jsonl", "batch", "processed")
    assert f.id.startswith("file-") and client.files.retrieve(f.id).bytes == len(data)
    assert client.files.content(f.id).content == data
    assert f.id in {x.id for x in client.files.list(purpose="batch")}
    assert f.id not in {x.id for x in client.files.list(purpose="batch_output")}
    g = client.files.create(file=("second.jsonl", data), purpose="batch")
    first = client.files.list(purpose="batch", limit=1)
    assert [x.id for x in first.data] == [g.id] and first.has_more  # newest first
    assert client.files.list(purpose="batch", limit=1, after=g.id).data[0].id == f.id
    client.files.delete(g.id)
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("t.jsonl", data), purpose="fine-tune")
    assert "fine-tune" in e.value.message and e.value.body["param"] == "purpose"
    assert client.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)


def test_chat_batch_bodies_equal_direct_greedy_calls(client, http):
    prompts = [f"Say something about the number {i}." for i in range(10)]
    lines = [chat_line(f"c{i}", p) for i, p in enumerate(prompts)] + [chat_line("m0", prompts[0], TINY_MISTRAL)]
    batch = create(client, lines, metadata={"purpose": "test"})
    assert batch.status == "validating" and batch.metadata == {"purpose": "test"} and batch.endpoint == CHAT
    batch = wait_for(client, batch.id, ("completed", "failed"))
    assert batch.status == "completed", batch.errors
    assert batch.request_counts.model_dump() == {"total": 11, "completed": 11, "failed": 0}
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at and batch.error_file_id is None
    out = lines_of(client, batch.output_file_id)
    assert sorted(x["custom_id"] for x in out) == sorted(x["custom_id"] for x in lines)
    for line, got in zip(lines, out):  # in input order
        assert got["id"].startswith("batch_req_") and got["error"] is None and got["response"]["status_code"] == 200
        body, direct = got["response"]["body"], http.post(CHAT, json=line["body"]).json()
        assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
        for key in ("model", "choices", "usage"):
            assert body[key] == direct[key], (line["custom_id"], key)
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"
    assert client.batches.list(limit=5).data[0].id == batch.id
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)
    assert any(b["id"] == batch.id and b["status"] == "completed" for b in http.get("/v1/status").json()["batches"])
    assert 'llmhost_batches{status="completed"}' in http.get("/metrics").text


def test_bad_bodies_fail_their_line_with_the_direct_answer(client, http):
    def line(custom_id: str, **body) -> dict:
        return {"custom_id": custom_id, "method": "POST", "url": "/v1/completions",
                "body": {"model": TINY_MISTRAL, "prompt": "Once", "max_tokens": 5, "temperature": 0, **body}}

    lines = [line("ok1"), line("nomodel", model="acme/nothing-here"), line("ok2"), line("hot", temperature=5),
             line("ok3")]
    batch = wait_for(client, create(client, lines, endpoint="/v1/completions").id, ("completed", "failed"))
    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"total": 5, "completed": 3, "failed": 2}
    assert [x["custom_id"] for x in lines_of(client, batch.output_file_id)] == ["ok1", "ok2", "ok3"]
    errors = {x["custom_id"]: x for x in lines_of(client, batch.error_file_id)}
    assert set(errors) == {"nomodel", "hot"}
    for custom_id, src in (("nomodel", lines[1]), ("hot", lines[3])):
        direct = http.post("/v1/completions", json=src["body"])
        got = errors[custom_id]
        assert got["error"] is None and direct.status_code >= 400
        assert got["response"]["status_code"] == direct.status_code
        assert got["response"]["body"] == direct.json()
    assert errors["nomodel"]["response"]["status_code"] == 404


def test_invalid_files_fail_validation_naming_each_line(client):
    good = chat_line("a", "hi")
    lines = [good, b"{not json", chat_line("a", "again"), {**chat_line("b", "x"), "url": "/v1/embeddings"}, b"",
             {**chat_line("c", "x"), "custom_id": ""}]
    batch = wait_for(client, create(client, lines).id, ("failed", "completed"))
    assert batch.status == "failed" and batch.failed_at and batch.output_file_id is None
    assert [(e.line, e.code) for e in batch.errors.data] == [
        (2, "invalid_json_line"), (3, "duplicate_custom_id"), (4, "mismatched_url"), (6, "missing_required_parameter")]
    assert "line 1" in batch.errors.data[1].message and batch.errors.data[2].param == "url"
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id="file-nope", endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(input_file_id=batch.input_file_id, endpoint="/v1/moderations", completion_window="24h")
    assert e.value.body["param"] == "endpoint"


def test_input_check_limits():
    check = InputCheck(CHAT, max_lines=2)
    for n, line in enumerate(jsonl([chat_line(str(i), "x") for i in range(4)]).splitlines(), 1):
        check.feed(n, line)
    assert [(e.code, e.line) for e in check.errors] == [("too_many_lines", 3)] and check.full
    empty = InputCheck(CHAT, 10)
    empty.feed(1, b"  ")
    empty.finish()
    assert [e.code for e in empty.errors] == ["empty_file"]
    bad = InputCheck(CHAT, 10)
    bad.feed(1, json.dumps({**chat_line("x", "y"), "method": "GET"}).encode())
    bad.feed(2, json.dumps({"custom_id": "z", "url": CHAT}).encode())
    assert [(e.code, e.param) for e in bad.errors] == [("invalid_method", "method"), ("missing_required_parameter", "body")]


def test_cancel_keeps_the_finished_lines(client):
    lines = [chat_line(f"l{i}", f"Tell a long story {i}.", max_tokens=300, ignore_eos=True) for i in range(120)]
    batch = create(client, lines)
    wait_until(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 1, 180, "a finished line")
    assert client.batches.cancel(batch.id).status in ("cancelling", "cancelled")
    batch = wait_for(client, batch.id, ("cancelled",))
    assert batch.cancelling_at and batch.cancelled_at
    out, err = lines_of(client, batch.output_file_id), lines_of(client, batch.error_file_id)
    assert sorted(x["custom_id"] for x in out + err) == sorted(x["custom_id"] for x in lines)
    assert len(out) == batch.request_counts.completed >= 1 and err
    assert all(x["error"]["code"] == "batch_cancelled" and x["response"] is None for x in err)
    assert all(x["response"]["body"]["usage"]["completion_tokens"] == 300 for x in out)
    assert client.batches.cancel(batch.id).status == "cancelled"  # again: nothing more to do


def test_embeddings_batch(client):
    texts = ["The capital of France is Paris.", "Embeddings map text to vectors.", "héllo wörld"]
    lines = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": MINILM, "input": t, "encoding_format": "float"}} for i, t in enumerate(texts)]
    lines.append({"custom_id": "both", "method": "POST", "url": "/v1/embeddings", "body": {"model": MINILM, "input": texts, "encoding_format": "base64"}})
    batch = wait_for(client, create(client, lines, endpoint="/v1/embeddings").id, ("completed", "failed"))
    assert batch.status == "completed" and batch.request_counts.completed == 4
    out = {x["custom_id"]: x["response"]["body"] for x in lines_of(client, batch.output_file_id)}
    direct = client.embeddings.create(model=MINILM, input=texts, encoding_format="float").data
    for i in range(3):
        got = out[f"e{i}"]["data"][0]["embedding"]
        assert max(abs(a - b) for a, b in zip(got, direct[i].embedding)) < 1e-5
    assert isinstance(out["both"]["data"][0]["embedding"], str)  # as the line asked
    assert [d["index"] for d in out["both"]["data"]] == [0, 1, 2]


def test_limits_and_expiry(stack, client):
    """A file over LLMHOST_MAX_FILE_BYTES is a 413; a file over LLMHOST_BATCH_MAX_LINES fails its
    batch; a batch past its window expires: finished lines kept, the rest `batch_expired` (its lines
    for a model no worker serves wait until then)."""
    url = stack.start_api("api-limits", LLMHOST_MAX_FILE_BYTES="4096", LLMHOST_BATCH_MAX_LINES="3",
                          LLMHOST_BATCH_WINDOW_SECONDS="8")
    small = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIStatusError) as e:
        small.files.create(file=("big.jsonl", b"x" * 5000), purpose="batch")
    assert e.value.status_code == 413
    many = wait_for(small, create(small, [chat_line(str(i), "x") for i in range(4)]).id, ("failed",))
    assert [(x.code, x.line) for x in many.errors.data] == [("too_many_lines", 4)]
    lines = [chat_line("now", "hi"), chat_line("never1", "hi", TINY_GENERIC), chat_line("never2", "hi", TINY_GENERIC)]
    batch = wait_for(small, create(small, lines).id, ("expired",), timeout=120)
    assert batch.expired_at and batch.request_counts.total == 3
    out, err = lines_of(client, batch.output_file_id), lines_of(client, batch.error_file_id)
    assert sorted(x["custom_id"] for x in out + err) == ["never1", "never2", "now"]
    assert {"never1", "never2"} <= {x["custom_id"] for x in err if x["error"]["code"] == "batch_expired"}
    stack.procs.pop("api-limits").terminate()


def _ready_worker(stack: Stack, r: redis_lib.Redis, proc) -> None:
    def ready() -> bool:
        return any(int(h.get(b"pid", 0)) == proc.pid and h.get(b"state") == b"ready"
                   for h in (r.hgetall(k) for k in r.scan_iter("llmhost:worker:*")))
    wait_until(ready, 120, f"worker {proc.pid}")


def test_batch_outlives_killed_worker_api_and_redis(stack, tmp_path):
    """On a private Redis (with its append-only file): the only worker of the model, the only API
    process and Redis itself are SIGKILLed mid-batch; with a new Redis (same data), API and worker,
    the batch completes with every line exactly once."""
    server = RedisServer(tmp_path / "redis").start()
    env = {"LLMHOST_REDIS_URL": server.url, "LLMHOST_BATCH_LEASE_SECONDS": "3", "LLMHOST_BATCH_LINES_PER_WORKER": "8"}
    try:
        worker = stack.start_worker(TINY_GENERIC, LLMHOST_MAX_BATCH="4", **env)
        r = redis_lib.Redis.from_url(server.url, socket_timeout=5)
        _ready_worker(stack, r, worker)
        url = stack.start_api("api-fault-1", **env)
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
        body = {"model": TINY_GENERIC, "prompt": "go", "max_tokens": 200, "temperature": 0, "ignore_eos": True}
        lines = [{"custom_id": f"k{i}", "method": "POST", "url": "/v1/completions", "body": {**body, "seed": i}}
                 for i in range(40)]
        batch = create(api, lines, endpoint="/v1/completions")
        in_flight: list[int] = []

        def some_done() -> bool:  # and, meanwhile, never more than 8 lines sent and not finished
            in_flight.append(r.hlen(f"llmhost:batch:{batch.id}:inflight"))
            return api.batches.retrieve(batch.id).request_counts.completed >= 4

        wait_until(some_done, 120, "some finished lines")
        assert 0 < max(in_flight) <= 8
        worker.send_signal(signal.SIGKILL)
        stack.procs.pop("api-fault-1").send_signal(signal.SIGKILL)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        server = RedisServer(tmp_path / "redis", port=server.port).start()
        url = stack.start_api("api-fault-2", **env)
        worker = stack.start_worker(TINY_GENERIC, LLMHOST_MAX_BATCH="4", **env)
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=2, timeout=30)
        done = wait_for(api, batch.id, ("completed", "failed", "expired"), timeout=240)
        assert done.status == "completed" and done.request_counts.model_dump() == {"total": 40, "completed": 40,
                                                                                    "failed": 0}
        out = lines_of(api, done.output_file_id)
        assert sorted(x["custom_id"] for x in out) == sorted(x["custom_id"] for x in lines)
        assert all(x["response"]["body"]["usage"]["completion_tokens"] == 200 for x in out)
        assert done.error_file_id is None
    finally:
        for name in [n for n in stack.procs if n.startswith("api-fault")]:
            stack.procs.pop(name).terminate()
        worker.terminate()
        server.stop()



def test_a_queued_job_whose_message_was_lost_is_sent_again(stack):
    """Redis restarted after a worker popped a message but before its claim was written: the
    job is queued, nobody holds it and its queue is empty. Its line's job is sent again (once per
    wait), and a job some worker took is left alone."""
    async def scenario() -> tuple[bool, bool, bool, int]:
        r = aioredis.Redis.from_url(stack.redis_url)
        jobs = JobClient(r, create_celery(Settings(redis_url=stack.redis_url)), 600)
        job = GenerateJob(job_id=f"cmpl-lost-{time.time_ns()}", model="acme/nobody-serves", prompts=["x"],
                          deadline=time.time() + 600, klass="batch")
        await jobs.submit("llmhost.generate", job, endpoint="/v1/completions", meta={}, watch=False)
        queue = "llmhost.model.acme/nobody-serves.batch"
        await r.delete(queue)  # the message is gone
        rec = await jobs.store.get(job.job_id)
        assert rec is not None
        too_soon = await jobs.redeliver_if_lost(job.job_id, rec, after=60)
        again = await jobs.redeliver_if_lost(job.job_id, rec, after=0)
        depth = int(await r.llen(queue))
        taken = await jobs.redeliver_if_lost(job.job_id, {**rec, "worker": "someone"}, after=0)
        await jobs.cancel(job.job_id)
        await r.delete(queue)
        await r.aclose()
        return too_soon, again, taken, depth

    too_soon, again, taken, depth = asyncio.run(scenario())
    assert (too_soon, again, taken, depth) == (False, True, False, 1)
