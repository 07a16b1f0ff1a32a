"""/v1/models, async jobs, health and readiness."""

import json
import time

import httpx

from tests.conftest import MINILM, SMOL, TINY_CHATML, TINY_GENERIC, TINY_LLAMA3


def test_models_lists_folders_and_who_serves_them(client, http):
    ids = [m.id for m in client.models.list()]
    assert {SMOL, MINILM, TINY_CHATML, TINY_LLAMA3, TINY_GENERIC} <= set(ids)
    cards = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert cards[SMOL]["served"] and cards[SMOL]["workers"] == 1 and cards[SMOL]["kind"] == "chat"
    assert cards[MINILM]["kind"] == "embedding"
    assert not cards[TINY_LLAMA3]["served"] and cards[TINY_LLAMA3]["workers"] == 0
    one = client.models.retrieve(SMOL)
    assert one.id == SMOL and one.owned_by == "HuggingFaceTB"
    assert http.get("/v1/models/acme/nope").status_code == 404


def poll(http, job_id, until=("succeeded", "failed", "cancelled"), timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in until:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {job['status']}")


def test_async_job_result_equals_sync(client, http):
    body = {"model": TINY_CHATML, "messages": [{"role": "user", "content": "the sea"}], "temperature": 0, "max_tokens": 8}
    r = http.post("/v1/jobs", json={"endpoint": "/v1/chat/completions", "body": body})
    assert r.status_code == 202
    job = r.json()
    assert job["object"] == "job" and job["status"] == "queued" and job["created_at"]
    done = poll(http, job["id"])
    assert done["status"] == "succeeded" and done["error"] is None
    sync = client.chat.completions.create(**body)
    assert done["result"]["object"] == "chat.completion"
    assert done["result"]["choices"][0]["message"]["content"] == sync.choices[0].message.content
    assert done["result"]["usage"] == sync.usage.model_dump(exclude_none=True)


def test_async_embeddings_and_failed_job(http):
    r = http.post("/v1/jobs", json={"endpoint": "/v1/embeddings", "body": {"model": MINILM, "input": ["a", "b"]}})
    done = poll(http, r.json()["id"])
    assert done["status"] == "succeeded" and len(done["result"]["data"]) == 2
    r = http.post("/v1/jobs", json={"endpoint": "/v1/completions",
                                    "body": {"model": TINY_CHATML, "prompt": "x", "max_tokens": 4000}})
    failed = poll(http, r.json()["id"])
    assert failed["status"] == "failed" and failed["result"] is None
    assert failed["error"]["code"] == "context_length_exceeded"


def test_cancel_running_job(http):
    body = {"model": SMOL, "messages": [{"role": "user", "content": "Write a long story."}], "max_tokens": 2000,
            "ignore_eos": True}  # it must still be running when cancelled, whatever the model says
    job = http.post("/v1/jobs", json={"endpoint": "/v1/chat/completions", "body": body}).json()
    poll(http, job["id"], until=("running",))
    cancelled = http.delete(f"/v1/jobs/{job['id']}").json()
    assert cancelled["status"] == "cancelled"
    time.sleep(0.5)
    assert http.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"  # the worker did not overwrite it
    # The worker let go of it: the next job on the same model finishes quickly.
    quick = http.post("/v1/jobs", json={"endpoint": "/v1/chat/completions", "body": {**body, "max_tokens": 2}}).json()
    assert poll(http, quick["id"], timeout=15)["status"] == "succeeded"


def test_job_errors(http):
    assert http.get("/v1/jobs/job-unknown").json()["error"]["code"] == "job_not_found"
    assert http.get("/v1/jobs/job-unknown").status_code == 404
    assert http.delete("/v1/jobs/job-unknown").status_code == 404
    r = http.post("/v1/jobs", json={"endpoint": "/v1/chat/completions", "body": {"model": TINY_CHATML}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "body.messages"
    r = http.post("/v1/jobs", json={"endpoint": "/v1/nope", "body": {}})
    assert r.status_code == 400


def test_results_expire(stack):
    url = stack.start_api("api-ttl", LLMHOST_JOB_TTL="2")
    body = {"model": MINILM, "input": "x"}
    job = httpx.post(f"{url}/v1/jobs", json={"endpoint": "/v1/embeddings", "body": body}).json()
    with httpx.Client(base_url=url) as h:
        assert poll(h, job["id"])["status"] == "succeeded"
        time.sleep(3)
        r = h.get(f"/v1/jobs/{job['id']}")
    assert r.status_code == 404


def test_health_and_ready(http):
    assert http.get("/health").json() == {"status": "ok"}
    ready = http.get("/ready")
    assert ready.status_code == 200 and ready.json()["workers_ready"] >= 4 and ready.json()["redis"] == "ok"


def test_ready_waits_for_every_model_it_must_serve(stack, http):
    """/ready is 200 only when every model of LLMHOST_READY_MODELS (default: the default models) has
    a ready worker, and says which are missing."""
    assert http.get("/ready").json()["missing"] == []
    url = stack.start_api("api-ready", LLMHOST_READY_MODELS=json.dumps([TINY_CHATML, TINY_LLAMA3]))
    r = httpx.get(f"{url}/ready", timeout=10)
    assert r.status_code == 503 and r.json()["missing"] == [TINY_LLAMA3] and r.json()["redis"] == "ok"
