"""Operations and security on the real stack: API keys, CORS, request ids and logs, metrics, overload."""

from __future__ import annotations

import json
import re
import time
import uuid

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tasks.contract.records import queue_name
from tests.conftest import SMOL, TINY_CHATML

ENV_KEYS = ("sk-test-one", "sk-test-two")
FILE_KEY = "sk-test-from-file"
ORIGIN = "https://app.example"
MSG = [{"role": "user", "content": "hi"}]


def envelope(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.fixture(scope="module")
def secure_url(stack) -> str:
    """An API with keys (two from the environment, comma-separated, one from a file) and CORS on."""
    keys_file = stack.root / "api-keys.txt"
    keys_file.write_text(f"# keys of the operations tests\n\n{FILE_KEY}\n# sk-test-commented-out\n")
    return stack.start_api("api-secure", LLMHOST_API_KEYS=", ".join(ENV_KEYS), LLMHOST_API_KEYS_FILE=str(keys_file),
                           LLMHOST_CORS_ORIGINS=json.dumps([ORIGIN]))


# --- API keys -----------------------------------------------------------------------------------

def test_api_keys_with_the_openai_sdk(secure_url):
    wrong = openai.OpenAI(base_url=f"{secure_url}/v1", api_key="sk-wrong", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.chat.completions.create(model=TINY_CHATML, messages=MSG, max_tokens=4)
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    assert e.value.body["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=TINY_CHATML, messages=MSG, max_tokens=4, stream=True)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()

    for key in (*ENV_KEYS, FILE_KEY):
        right = openai.OpenAI(base_url=f"{secure_url}/v1", api_key=key, max_retries=0, timeout=60)
        assert TINY_CHATML in {m.id for m in right.models.list()}
    r = right.chat.completions.create(model=TINY_CHATML, messages=MSG, max_tokens=4, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")
    chunks = list(right.chat.completions.create(model=TINY_CHATML, messages=MSG, max_tokens=4, stream=True))
    assert chunks and chunks[0].choices[0].delta.role == "assistant"


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/old/stream"), ("GET", "/ready"),
    ("GET", "/metrics"), ("GET", "/v1/files"), ("POST", "/v1/audio/speech"), ("GET", "/v1/nowhere"),
    ("GET", "/v1/jobs/job-x"), ("GET", "/openapi.json"), ("GET", "/docs"),
])
def test_every_route_but_health_needs_a_key(secure_url, method, path):
    with httpx.Client(base_url=secure_url, timeout=30) as h:
        missing = envelope(h.request(method, path), 401)
        assert missing["type"] == "authentication_error" and missing["code"] == "invalid_api_key"
        assert missing["param"] is None
        r = h.request(method, path, headers={"Authorization": "Bearer sk-nope"})
        assert envelope(r, 401)["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
        assert "sk-nope" not in r.text
        envelope(h.request(method, path, headers={"Authorization": f"Basic {ENV_KEYS[0]}"}), 401)


def test_health_is_open_and_keys_open_the_rest(secure_url):
    with httpx.Client(base_url=secure_url, timeout=30) as h:
        assert h.get("/health").json() == {"status": "ok"}
        auth = {"Authorization": f"Bearer {ENV_KEYS[1]}"}
        assert h.get("/ready", headers=auth).status_code == 200
        assert h.get("/metrics", headers=auth).status_code == 200
        assert envelope(h.get("/v1/fine_tuning/jobs", headers=auth), 501)["type"] == "not_implemented"
        assert h.get("/v1/files", headers=auth).json()["object"] == "list"
        assert envelope(h.get("/v1/nowhere", headers=auth), 404)["type"] == "not_found_error"


def test_keys_never_reach_the_logs(secure_url, stack):
    log = (stack.root / "api-secure.log").read_text(errors="replace")
    assert "API key(s)" in log  # the start line says keys are on, without them
    for key in (*ENV_KEYS, FILE_KEY, "sk-wrong", "sk-nope"):
        assert key not in log


# --- CORS -----------------------------------------------------------------------------------------

PREFLIGHT = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type"}


def test_cors_preflight_when_enabled(secure_url):
    with httpx.Client(base_url=secure_url, timeout=30) as h:
        r = h.options("/v1/chat/completions", headers=PREFLIGHT)  # no key: browsers send none here
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in r.headers["access-control-allow-methods"]
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        other = h.options("/v1/chat/completions", headers={**PREFLIGHT, "Origin": "https://evil.example"})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
        simple = h.get("/v1/models", headers={"Origin": ORIGIN, "Authorization": f"Bearer {ENV_KEYS[0]}"})
        assert simple.status_code == 200 and simple.headers["access-control-allow-origin"] == ORIGIN
        assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
        refused = h.get("/v1/models", headers={"Origin": ORIGIN})  # a 401 the page can read
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN


def test_cors_off_by_default(http):
    r = http.options("/v1/chat/completions", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in r.headers
    envelope(r, 405)
    assert "access-control-allow-origin" not in http.get("/health", headers={"Origin": ORIGIN}).headers


# --- request ids and logs -------------------------------------------------------------------------

def _log_lines(path) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def _wait_for(check, timeout=15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (found := check()):
            return found
        time.sleep(0.2)
    return check()


def test_request_ids_on_every_response(http):
    generated = http.get("/health").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert http.get("/health").headers["x-request-id"] != generated
    assert http.get("/health", headers={"X-Request-ID": "client.id-42_A"}).headers["x-request-id"] == "client.id-42_A"
    for bad in ("a" * 65, "has space", "semi;colon", "new\\nline", ""):
        rid = http.get("/health", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert rid != bad and re.fullmatch(r"[0-9a-f]{32}", rid)
    assert http.get("/v1/nowhere", headers={"X-Request-ID": "rid-404"}).headers["x-request-id"] == "rid-404"
    assert http.post("/v1/chat/completions", json={}, headers={"X-Request-ID": "rid-400"}).headers["x-request-id"] == "rid-400"
    with http.stream("POST", "/v1/chat/completions", headers={"X-Request-ID": "rid-sse"},
                     json={"model": TINY_CHATML, "messages": MSG, "max_tokens": 3, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["x-request-id"] == "rid-sse"
        assert [x for x in r.iter_lines() if x][-1] == "data: [DONE]"


def test_request_id_reaches_api_and_worker_logs(http, stack):
    rid = f"rid-{uuid.uuid4().hex[:12]}"
    r = http.post("/v1/chat/completions", headers={"X-Request-ID": rid},
                  json={"model": TINY_CHATML, "messages": MSG, "max_tokens": 3})
    assert r.status_code == 200 and r.headers["x-request-id"] == rid
    job_id = r.json()["id"]

    access = _wait_for(lambda: [x for x in _log_lines(stack.root / "api.log") if x.get("request_id") == rid])
    assert access, "no API log line carries the request id"
    line = access[-1]
    assert {"ts", "level", "logger", "msg", "pid"} <= set(line) and line["logger"] == "llmhost.access"
    assert line["route"] == "/v1/chat/completions" and line["status"] == 200 and line["job_id"] == job_id

    worker_logs = list(stack.root.glob("worker-acme--tiny-chatml-*.log"))
    mine = _wait_for(lambda: [x for p in worker_logs for x in _log_lines(p) if x.get("request_id") == rid])
    assert mine, "no worker log line carries the request id"
    assert all(x["job_id"] == job_id for x in mine)
    assert mine[-1]["service"] == "worker" and mine[-1]["model"] == TINY_CHATML
    # The job's closing line says how long it took, and how much of that the engine had it
    # (bench/load.py's "outside the engine" figure reads it).
    ended = _wait_for(lambda: [x for p in worker_logs for x in _log_lines(p)
                               if x.get("job_id") == job_id and "engine_seconds" in x])
    assert ended, "the job's closing line carries no engine_seconds"
    assert 0 < ended[-1]["engine_seconds"] <= ended[-1]["seconds"] + 0.001


def test_prompts_and_outputs_are_never_logged(http, stack):
    marker = f"zebra{uuid.uuid4().hex[:10]}"
    ok = http.post("/v1/chat/completions", json={"model": TINY_CHATML, "max_tokens": 3,
                                                 "messages": [{"role": "user", "content": f"say {marker}"}]})
    assert ok.status_code == 200
    too_long = http.post("/v1/completions", json={"model": TINY_CHATML, "prompt": f"{marker} " * 600})
    assert envelope(too_long, 400)["code"] == "context_length_exceeded"
    job = http.post("/v1/jobs", json={"endpoint": "/v1/completions",
                                      "body": {"model": TINY_CHATML, "prompt": marker, "max_tokens": 2}}).json()
    _wait_for(lambda: http.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded")
    time.sleep(0.5)  # let the worker write its lines
    for path in stack.root.glob("*.log"):
        assert marker not in path.read_text(errors="replace"), f"{path.name} holds a prompt"


# --- metrics --------------------------------------------------------------------------------------

def scrape(http, **headers) -> dict[tuple[str, tuple], float]:
    r = http.get("/metrics", headers=headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        assert family.name.startswith("llmhost_"), family.name
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def val(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_after_chat_requests(http, client):
    before = scrape(http)
    r = client.chat.completions.create(model=SMOL, messages=[{"role": "user", "content": "Count from 1 to 20."}],
                                       temperature=0, max_tokens=12)
    chunks = list(client.chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": "Count from 1 to 20."}], temperature=0, max_tokens=12,
        stream=True, stream_options={"include_usage": True}))
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=TINY_CHATML, prompt="x", max_tokens=5000)
    assert http.get("/v1/jobs/job-none").status_code == 404
    after = scrape(http)

    def grew(name, **labels) -> float:
        return val(after, name, **labels) - val(before, name, **labels)

    chat = {"route": "/v1/chat/completions", "method": "POST"}
    assert grew("llmhost_requests_total", status="200", **chat) == 2
    assert grew("llmhost_request_duration_seconds_count", **chat) == 2
    assert grew("llmhost_request_duration_seconds_sum", **chat) > 0
    assert grew("llmhost_requests_total", route="/v1/completions", method="POST", status="400") == 1
    assert grew("llmhost_requests_total", route="/v1/jobs/{job_id}", method="GET", status="404") == 1
    assert grew("llmhost_time_to_first_token_seconds_count", model=SMOL) == 1
    assert grew("llmhost_time_to_first_token_seconds_sum", model=SMOL) > 0
    assert grew("llmhost_inter_token_latency_seconds_count", model=SMOL) >= 2
    usage = r.usage.completion_tokens + chunks[-1].usage.completion_tokens
    assert grew("llmhost_generation_tokens_total", model=SMOL) == usage
    assert grew("llmhost_prompt_tokens_total", model=SMOL) == r.usage.prompt_tokens + chunks[-1].usage.prompt_tokens
    assert grew("llmhost_job_outcomes_total", endpoint="/v1/chat/completions", outcome="succeeded") == 2
    assert grew("llmhost_job_outcomes_total", endpoint="/v1/completions", outcome="failed") == 1
    assert val(after, "llmhost_workers", model=SMOL, state="ready") == 1
    assert val(after, "llmhost_workers", model=SMOL, state="loading") == 0
    assert ("llmhost_queue_depth", (("model", SMOL),)) in after
    assert ("llmhost_running_sequences", (("model", TINY_CHATML),)) in after
    assert ("llmhost_waiting_sequences", (("model", SMOL),)) in after
    assert val(after, "llmhost_redis_up") == 1
    # Route templates, never raw paths: no label value holds a job id.
    assert not any("job-none" in v for (_, labels) in after for _, v in labels)


def test_metrics_count_each_prompt_once_with_n(http, client):
    """n choices share one prompt: the prompt-token counter grows as `usage.prompt_tokens` does, once."""
    before = scrape(http)
    msg = [{"role": "user", "content": "Count from 1 to 20."}]
    r = client.chat.completions.create(model=TINY_CHATML, messages=msg, n=2, max_tokens=4, temperature=1.0, seed=7)
    chunks = list(client.chat.completions.create(model=TINY_CHATML, messages=msg, n=2, max_tokens=4, stream=True,
                                                 stream_options={"include_usage": True}))
    after = scrape(http)
    streamed = chunks[-1].usage
    assert len(r.choices) == 2 and streamed is not None
    single = client.chat.completions.create(model=TINY_CHATML, messages=msg, max_tokens=1).usage.prompt_tokens
    assert r.usage.prompt_tokens == streamed.prompt_tokens == single  # one prompt, however many choices

    def grew(name) -> float:
        return val(after, name, model=TINY_CHATML) - val(before, name, model=TINY_CHATML)

    assert grew("llmhost_prompt_tokens_total") == r.usage.prompt_tokens + streamed.prompt_tokens
    assert grew("llmhost_generation_tokens_total") == r.usage.completion_tokens + streamed.completion_tokens


# --- overload -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def limited(stack) -> str:
    """An API that allows one waiting job per model and 2 KiB bodies."""
    return stack.start_api("api-limited", LLMHOST_MAX_QUEUE_DEPTH="1", LLMHOST_MAX_BODY_BYTES="2048")


def test_large_bodies_are_413_with_or_without_length(limited):
    big = {"model": TINY_CHATML, "messages": [{"role": "user", "content": "x" * 4000}]}
    with httpx.Client(base_url=limited, timeout=30) as h:
        assert envelope(h.post("/v1/chat/completions", json=big), 413)["code"] == "request_too_large"
        chunked = h.post("/v1/chat/completions", content=iter([json.dumps(big).encode()[i:i + 512]
                                                               for i in range(0, 4200, 512)]),
                         headers={"content-type": "application/json"})
        assert "content-length" not in chunked.request.headers
        assert envelope(chunked, 413)["code"] == "request_too_large"
        ok = h.post("/v1/chat/completions", json={**big, "messages": MSG, "max_tokens": 2})
        assert ok.status_code == 200, ok.text


def test_full_queue_is_429_with_retry_after(stack, http, limited):
    redis = stack.redis
    body = {"model": SMOL, "messages": [{"role": "user", "content": "Write a very long story about the sea."}],
            "max_tokens": 4000, "ignore_eos": True}  # slow jobs, whatever the model says
    job_ids: list[str] = []
    try:
        # Real load: slow background jobs until the worker holds all it can take and the rest wait
        # in Redis, in the model's background queue.
        while redis.llen(queue_name(SMOL, "background")) < 3 and len(job_ids) < 200:
            for _ in range(8):
                r = http.post("/v1/jobs", json={"endpoint": "/v1/chat/completions", "body": body})
                assert r.status_code == 202, r.text
                job_ids.append(r.json()["id"])
            time.sleep(0.3)
        depth = redis.llen(queue_name(SMOL, "background"))
        assert depth >= 1, f"the queue never filled ({len(job_ids)} jobs)"

        with httpx.Client(base_url=limited, timeout=120) as h:
            r = h.post("/v1/jobs", json={"endpoint": "/v1/chat/completions", "body": body})
            err = envelope(r, 429)
            assert err["type"] == "rate_limit_error" and err["code"] == "queue_full" and SMOL in err["message"]
            assert 1 <= int(r.headers["retry-after"]) <= 5
            # Each class has its own limit: a backlog of bulk work never turns interactive requests away.
            ok = h.post("/v1/chat/completions", json={**body, "max_tokens": 2})
            assert ok.status_code == 200, ok.text
            r = h.post("/old/generate", json={"model": SMOL, "prompt": "hi", "max_new_tokens": 2})
            assert r.status_code == 200, r.text
            # Another model's queue is empty: served as usual.
            ok = h.post("/v1/chat/completions", json={"model": TINY_CHATML, "messages": MSG, "max_tokens": 2})
            assert ok.status_code == 200, ok.text
            m = scrape(h)
            assert val(m, "llmhost_queue_depth", model=SMOL) >= 1
            assert val(m, "llmhost_requests_total", route="/v1/jobs", method="POST", status="429") == 1
    finally:
        for job_id in job_ids:
            http.delete(f"/v1/jobs/{job_id}")

        def idle() -> bool:
            workers = [redis.hgetall(k) for k in redis.scan_iter("llmhost:worker:*")]
            mine = [w for w in workers if w.get(b"model") == SMOL.encode()]
            return redis.llen(queue_name(SMOL)) == 0 and all(int(w.get(b"running") or 0) == 0 for w in mine)
        assert _wait_for(idle, 90), "the flood did not drain after cancelling"
    statuses = {http.get(f"/v1/jobs/{j}").json()["status"] for j in job_ids}
    assert statuses <= {"cancelled", "succeeded", "failed"}


def test_full_interactive_queue_is_429_for_the_sdk(stack, limited):
    """A worker that stops taking work (SIGSTOP: alive, but stuck): interactive requests pile up in
    its model's queue and, past the limit, the SDK gets RateLimitError at once."""
    import shutil
    import signal
    import threading

    model = "acme/tiny-chatml-stuck"
    shutil.copytree(stack.models_dir / TINY_CHATML, stack.models_dir / model)
    proc = stack.start_worker(model)
    assert _wait_for(lambda: stack.ready_workers().get(model), 90), "worker not ready"
    body = {"model": model, "messages": MSG, "max_tokens": 2}
    answers: list[int] = []
    calls: list[threading.Thread] = []

    def call() -> None:
        answers.append(httpx.post(f"{limited}/v1/chat/completions", json=body, timeout=60).status_code)
    def fresh_heartbeat() -> bool:  # stopped right after a beat, its presence outlives the test's step
        beats = [float(stack.redis.hget(k, "heartbeat_at") or 0) for k in stack.redis.scan_iter("llmhost:worker:*")
                 if stack.redis.hget(k, "pid") == str(proc.pid).encode()]
        return bool(beats) and time.time() - beats[0] < 0.3
    assert _wait_for(fresh_heartbeat, 10)
    proc.send_signal(signal.SIGSTOP)
    try:
        # One may be popped into the stopped worker's socket (its BRPOP was waiting); the next waits.
        while stack.redis.llen(queue_name(model)) < 1 and len(calls) < 3:
            calls.append(threading.Thread(target=call))
            calls[-1].start()
            _wait_for(lambda: stack.redis.llen(queue_name(model)) >= 1, 0.5)  # within its presence TTL
        assert stack.redis.llen(queue_name(model)) >= 1, "nothing waited in the queue"
        sdk = openai.OpenAI(base_url=f"{limited}/v1", api_key="unused", max_retries=0, timeout=60)
        with pytest.raises(openai.RateLimitError) as e:
            sdk.chat.completions.create(**body)
        assert e.value.code == "queue_full"
    finally:
        proc.send_signal(signal.SIGCONT)
    for t in calls:
        t.join(60)
    assert answers == [200] * len(calls)  # the stuck worker resumed and answered them
    proc.terminate()
