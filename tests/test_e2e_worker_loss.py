"""A worker killed mid-generation: the waiting client and the job record end in a definite state."""

import signal
import threading
import time

import httpx

from tests.conftest import TINY_GENERIC


def test_killed_worker_ends_jobs_and_requests(stack, http):
    worker = stack.start_worker(TINY_GENERIC)
    end = time.monotonic() + 60
    while not stack.ready_workers().get(TINY_GENERIC):
        assert time.monotonic() < end, "worker did not become ready"
        time.sleep(0.2)
    # The tiny model is fast: make each job long with many prompts of many tokens.
    body = {"model": TINY_GENERIC, "prompt": ["go"] * 30, "max_tokens": 400, "temperature": 1.0, "seed": 1}
    result: dict = {}

    def call() -> None:
        result["response"] = httpx.post(f"{stack.base_url}/v1/completions", json=body, timeout=60)

    job = http.post("/v1/jobs", json={"endpoint": "/v1/completions", "body": body}).json()
    t = threading.Thread(target=call)
    t.start()
    end = time.monotonic() + 10
    while http.get(f"/v1/jobs/{job['id']}").json()["status"] != "running":
        assert time.monotonic() < end
        time.sleep(0.01)
    worker.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    t.join(30)
    assert not t.is_alive(), "the waiting client hung"
    r = result["response"]
    assert r.status_code in (502, 503) and r.json()["error"]["code"] in ("worker_lost", "model_not_served")
    final = http.get(f"/v1/jobs/{job['id']}").json()
    assert final["status"] == "failed" and final["error"]["code"] == "worker_lost"
    assert time.monotonic() - killed_at < 15
