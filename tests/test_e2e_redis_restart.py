"""Redis goes away and comes back: the front answers 503 at once meanwhile, /ready says why, and
every process recovers by itself (no restart), on a private stack so the shared one is untouched."""

from __future__ import annotations

import time

import httpx

from tasks.supervisor.redis_server import RedisServer
from tests.conftest import TINY_CHATML, Stack, _wait

BODY = {"model": TINY_CHATML, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0}


def test_redis_restart_is_survived(tmp_path, tiny_models, stack):
    server = RedisServer(tmp_path / "redis").start()
    restarted = None
    own = Stack(tmp_path, tiny_models, server.url, {**stack.env, "LLMHOST_REDIS_URL": server.url,
                                                    "LLMHOST_READY_MODELS": f'["{TINY_CHATML}"]'})
    try:
        own.start_worker(TINY_CHATML)
        url = own.start_api("api-restart")
        _wait(lambda: httpx.get(f"{url}/ready", timeout=2).status_code == 200, 60, "private stack")
        assert httpx.post(f"{url}/v1/chat/completions", json=BODY, timeout=30).status_code == 200

        server.stop()
        started = time.perf_counter()
        down = httpx.post(f"{url}/v1/chat/completions", json=BODY, timeout=30)
        took = time.perf_counter() - started
        assert down.status_code == 503, down.text
        assert set(down.json()["error"]) == {"message", "type", "param", "code"}
        assert took < 10  # no hang: a bounded wait for a connection that cannot be made
        ready = httpx.get(f"{url}/ready", timeout=10)
        assert ready.status_code == 503 and "unreachable" in ready.json()["redis"]
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200

        restarted = RedisServer(tmp_path / "redis", port=server.port).start()  # same address, empty data
        _wait(lambda: httpx.get(f"{url}/ready", timeout=2).status_code == 200, 90, "recovery after the restart")
        end = time.monotonic() + 60
        while True:  # Celery's consumer reconnects with back-off
            r = httpx.post(f"{url}/v1/chat/completions", json=BODY, timeout=60)
            if r.status_code == 200 or time.monotonic() > end:
                break
            time.sleep(1)
        assert r.status_code == 200, r.text
        stream = httpx.post(f"{url}/v1/chat/completions", json={**BODY, "stream": True}, timeout=60)
        assert stream.status_code == 200 and stream.text.rstrip().endswith("data: [DONE]")
    finally:
        own.stop()
        server.stop()
        if restarted:
            restarted.stop()
