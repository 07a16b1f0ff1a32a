"""Concurrent requests to one worker are decoded together, and each still gets its own answer."""

import time
from concurrent.futures import ThreadPoolExecutor

from tests.conftest import TINY_CHATML

PROMPTS = [f"Tell me story number {i} about the sea." for i in range(8)]


def test_concurrent_streams_share_the_batch(client, stack):
    def ask(prompt: str) -> tuple[str, str, int]:
        chunks = list(client.chat.completions.create(
            model=TINY_CHATML, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=200,
            stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert len(finish) == 1
        return text, finish[0], chunks[-1].usage.completion_tokens

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        results = list(pool.map(ask, PROMPTS))
    assert all(r[2] > 0 for r in results)
    assert len({r[0] for r in results}) > 1  # different prompts, different answers
    def peak() -> int:
        return max(int(stack.redis.hget(k, "peak_batch") or 0) for k in stack.redis.scan_iter("llmhost:worker:*")
                   if stack.redis.hget(k, "model") == TINY_CHATML.encode())

    end = time.monotonic() + 5  # the figure reaches Redis with the worker's next heartbeat
    while peak() < 2 and time.monotonic() < end:
        time.sleep(0.2)
    assert peak() >= 2, "requests were never decoded together"
