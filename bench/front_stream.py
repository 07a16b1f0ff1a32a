"""The front's cost per streamed token, in process: no model, no Redis, no HTTP.

    python -m bench.front_stream --tokens 2000 --repeats 9

N synthetic text deltas take the real path from the reply channel on: the EventHub's listener reads
them as Redis delivers them (JSON, one message per read) from a stand-in pub/sub and routes them to
the job's queue; the job's JobWatch hands them out and counts them in the metrics; the OpenAI chat
translator (``api/streaming.py``) turns each into an SSE chunk, and sse-starlette's ``ensure_bytes``
makes the bytes it would send. The CPU time of this process from the first message to ``[DONE]``,
over N, is the front's cost per token (the socket write and the worker are not in it); CPU time,
not wall time, so that other work on a shared machine does not count. Prints µs per token, the
best and the median of the repeats. Numbers, not asserts: this is not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from sse_starlette.event import ensure_bytes

from api.gateway import Submitted
from api.metrics import Metrics
from api.streaming import StreamShape, stream_events
from tasks.contract.payloads import TASK_GENERATE, Event, GenerateResult, Output
from tasks.queue.client import JobClient, JobWatch

MODEL = "acme/bench"
ENDPOINT = "/v1/chat/completions"


def open_stream(client: JobClient, job_id: str) -> Submitted[GenerateResult]:
    """A watched job as ``Gateway._submit`` leaves it (the one part that follows the API's version)."""
    watch: JobWatch[GenerateResult] = JobWatch(client, job_id, MODEL, deadline=time.time() + 600, task=TASK_GENERATE)
    watch.observer = Metrics().track(ENDPOINT, MODEL)
    return Submitted(job_id, int(time.time()), MODEL, watch)


class ReplayedPubSub:
    """Redis's pub/sub as the EventHub uses it, replaying prepared messages one per read."""

    def __init__(self, messages: list[bytes]) -> None:
        self._messages = iter(messages)

    async def subscribe(self, channel: str) -> None:
        pass

    async def get_message(self, timeout: float) -> dict[str, Any] | None:
        await asyncio.sleep(0)  # a socket read suspends: the consumer runs between two messages
        data = next(self._messages, None)
        if data is None:
            await asyncio.sleep(timeout)  # a quiet channel
            return None
        return {"type": "message", "data": data}

    async def aclose(self) -> None:
        pass


class StandInRedis:
    def __init__(self, messages: list[bytes]) -> None:
        self._messages = messages

    def pubsub(self, ignore_subscribe_messages: bool = True) -> ReplayedPubSub:
        return ReplayedPubSub(self._messages)

    def register_script(self, script: str) -> Any:  # JobStore's transition script, never run here
        return None


def messages(job_id: str, tokens: int) -> list[bytes]:
    """What a worker publishes for one greedy stream: deltas, then the result."""
    out = [Event(type="delta", job=job_id, index=0, text=f" w{i % 97}").model_dump_json(exclude_defaults=True).encode()
           for i in range(tokens)]
    text = "".join(f" w{i % 97}" for i in range(tokens))
    result = GenerateResult(outputs=[Output(index=0, text=text, finish_reason="length", prompt_tokens=12,
                                            completion_tokens=tokens)])
    out.append(Event(type="done", job=job_id, result=result.model_dump()).model_dump_json(exclude_defaults=True).encode())
    return out


async def one_run(tokens: int) -> float:
    """CPU seconds per token for one stream of ``tokens`` deltas."""
    job_id = "chatcmpl-bench"
    client = JobClient(StandInRedis(messages(job_id, tokens)), None, 60)  # type: ignore[arg-type]
    sub = open_stream(client, job_id)  # opens the job's queue before anything arrives, as submit does
    shape = StreamShape("chat.completion.chunk", chat=True, include_usage=True)
    frames = 0
    started = time.process_time()
    await client.hub.start()
    async for item in stream_events(sub, shape):
        ensure_bytes(item, "\n")
        frames += 1
    elapsed = time.process_time() - started
    await client.hub.stop()
    assert frames == tokens + 4, frames  # role, deltas, finish, usage, [DONE]
    return elapsed / tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args()
    asyncio.run(one_run(200))  # warm-up: imports, pydantic schemas, prometheus children
    runs = [asyncio.run(one_run(args.tokens)) * 1e6 for _ in range(args.repeats)]
    print(f"front cost per streamed token ({args.tokens} tokens, {args.repeats} runs): "
          f"best {min(runs):.1f} µs, median {statistics.median(runs):.1f} µs")


if __name__ == "__main__":
    main()
