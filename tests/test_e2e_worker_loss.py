"""A worker killed mid-generation with nobody to take over: what a client has already seen cannot be
replayed, so a stream that showed tokens ends with `worker_lost`; a sync request is delivered again
and, with no worker of its model left, ends with 503 rather than waiting; nothing hangs."""

import signal
import threading
import time

import httpx

from tests.conftest import TINY_GENERIC


def test_killed_worker_ends_streams_and_sync_requests(stack, http):
    worker = stack.start_worker(TINY_GENERIC)
    end = time.monotonic() + 60
    while not stack.ready_workers().get(TINY_GENERIC):
        assert time.monotonic() < end, "worker did not become ready"
        time.sleep(0.2)
    body = {"model": TINY_GENERIC, "prompt": ["go"] * 30, "max_tokens": 400, "temperature": 1.0, "seed": 1,
            "ignore_eos": True}
    result: dict = {}

    def call() -> None:
        result["response"] = httpx.post(f"{stack.base_url}/v1/completions", json=body, timeout=60)

    t = threading.Thread(target=call)
    t.start()
    lines: list[str] = []
    with httpx.stream("POST", f"{stack.base_url}/v1/completions", json={**body, "prompt": "go", "stream": True},
                      timeout=60) as s:
        for line in s.iter_lines():
            if line.startswith("data: "):
                lines.append(line)
            if len(lines) == 3:  # tokens shown: from now on it cannot be redelivered invisibly
                worker.send_signal(signal.SIGKILL)
                killed_at = time.monotonic()
    assert lines[-1] == "data: [DONE]" and "worker_lost" in lines[-2], lines[-3:]
    t.join(30)
    assert not t.is_alive(), "the waiting client hung"
    r = result["response"]
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_served", r.text
    assert time.monotonic() - killed_at < 15
