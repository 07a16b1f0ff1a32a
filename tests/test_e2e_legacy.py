"""The /old/* routes on the same machinery."""

import json
import time

from tests.conftest import SMOL, TINY_CHATML


def test_old_generate_prompt_and_messages(client, http):
    r = http.post("/old/generate", json={"model": TINY_CHATML, "prompt": "The sea", "max_new_tokens": 6, "temperature": 0})
    assert r.status_code == 200
    body = r.json()
    ref = client.completions.create(model=TINY_CHATML, prompt="The sea", max_tokens=6, temperature=0)
    assert body["text"] == ref.choices[0].text and body["usage"]["completion_tokens"] == ref.usage.completion_tokens
    assert body["job_id"].startswith("cmpl-") and body["model"] == TINY_CHATML
    msgs = [{"role": "user", "content": "the sea"}]
    r = http.post("/old/generate", json={"model": TINY_CHATML, "messages": msgs, "max_new_tokens": 6, "temperature": 0})
    ref = client.chat.completions.create(model=TINY_CHATML, messages=msgs, max_tokens=6, temperature=0)
    assert r.json()["text"] == ref.choices[0].message.content


def test_old_generate_defaults_to_the_default_chat_model(http):
    r = http.post("/old/generate", json={"prompt": "Hello", "max_new_tokens": 2})
    assert r.status_code == 200 and r.json()["model"] == SMOL


def test_old_generate_errors(http):
    r = http.post("/old/generate", json={"model": TINY_CHATML})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_old_stream_events(http):
    body = {"model": TINY_CHATML, "prompt": "The sea", "max_new_tokens": 8, "temperature": 0}
    with http.stream("POST", "/old/stream", json=body) as r:
        events, current = [], None
        for line in r.iter_lines():
            if line.startswith("event: "):
                current = line[7:]
            elif line.startswith("data: "):
                events.append((current, json.loads(line[6:])))
    tokens = "".join(d["text"] for e, d in events if e == "token")
    assert events[-1][0] == "done" and events[-1][1]["text"] == tokens
    assert tokens == http.post("/old/generate", json=body).json()["text"]


def test_old_status(http):
    s = http.get("/old/status").json()
    assert s["ready"] and s["redis"] == "ok"
    assert {w["model"] for w in s["workers"]} >= {SMOL, TINY_CHATML}
    assert all({"state", "device", "dtype", "pid", "host"} <= set(w) for w in s["workers"])


def test_old_initialize_reloads_with_new_dtype(http, stack):
    def wait(job_id):
        end = time.monotonic() + 60
        while time.monotonic() < end:
            job = http.get("/old/status", params={"job_id": job_id}).json()
            if job["status"] in ("succeeded", "failed"):
                return job
            time.sleep(0.2)
        raise AssertionError("initialize did not finish")

    def dtype():
        for key in stack.redis.scan_iter("llmhost:worker:*"):
            h = stack.redis.hgetall(key)
            if h[b"model"].decode() == TINY_CHATML:
                return h[b"dtype"].decode()

    r = http.post("/old/initialize", json={"model": TINY_CHATML, "dtype": "bfloat16"})
    assert r.status_code == 202 and r.json()["job_id"]
    job = wait(r.json()["job_id"])
    assert job["status"] == "succeeded" and job["result"]["dtype"] == "bfloat16"
    assert dtype() == "bfloat16"
    ok = http.post("/old/generate", json={"model": TINY_CHATML, "prompt": "x", "max_new_tokens": 3})
    assert ok.status_code == 200
    # A load that cannot work fails the job clearly and leaves the previous model serving.
    bad = wait(http.post("/old/initialize", json={"model": TINY_CHATML, "quantization": "4bit", "device": "cpu"}).json()["job_id"])
    assert bad["status"] == "failed" and "CUDA" in bad["error"]["message"]
    assert dtype() == "bfloat16"
    back = wait(http.post("/old/initialize", json={"model": TINY_CHATML, "dtype": "float32"}).json()["job_id"])
    assert back["status"] == "succeeded" and dtype() == "float32"


def test_old_generate_takes_max_tokens_as_max_new_tokens(http):
    """Old clients send the OpenAI name; it means the same."""
    body = {"model": TINY_CHATML, "prompt": "The sea", "temperature": 0}
    a = http.post("/old/generate", json={**body, "max_tokens": 3})
    b = http.post("/old/generate", json={**body, "max_new_tokens": 3})
    assert a.status_code == 200 and a.json()["usage"]["completion_tokens"] <= 3
    assert a.json()["text"] == b.json()["text"]
