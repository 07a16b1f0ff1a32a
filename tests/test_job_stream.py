"""A job's typed event stream and its translators, in process: wire events go straight into the
job's queue on the hub (no Redis, no worker), the metrics are a real registry."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from api.gateway import Submitted
from api.metrics import Metrics
from api.streaming import StreamShape, stream_events
from tasks.contract.errors import JobError
from tasks.contract.payloads import TASK_GENERATE, Event, GenerateResult, Output, read_reply, reply_message
from tasks.queue.client import JobClient, JobWatch
from tasks.queue.events import Failed, Finished, TextDelta

JOB = "chatcmpl-test"


class NoRedis:
    def register_script(self, script: str) -> None:
        return None


class Client(JobClient):
    """The real client, minus Redis: cancels are recorded, the record says the job still runs."""

    def __init__(self) -> None:
        super().__init__(NoRedis(), None, 60)  # type: ignore[arg-type]
        self.cancelled: list[str] = []

    async def cancel(self, job_id: str, reason: str = "") -> bool:
        self.cancelled.append(job_id)
        return True


def result(texts: list[str], n: int = 1) -> dict:
    return GenerateResult(n=n, outputs=[Output(index=i, text=t, finish_reason="length", prompt_tokens=5,
                                               completion_tokens=len(t)) for i, t in enumerate(texts)]).model_dump()


def watched(client: Client, metrics: Metrics, events: list[Event], deadline: float = 60) -> Submitted[GenerateResult]:
    watch: JobWatch[GenerateResult] = JobWatch(client, JOB, "m", time.time() + deadline, task=TASK_GENERATE)
    watch.observer = metrics.track("/v1/chat/completions", "m")
    queue = client.hub.open(JOB)
    for e in events:
        queue.put_nowait(e)
    return Submitted(JOB, 0, "m", watch)


def counted(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def collect(watch: JobWatch) -> list:
    async with watch:
        return [event async for event in watch]


def test_events_are_typed_and_the_outcome_counted_once():
    client, metrics = Client(), Metrics()
    sub = watched(client, metrics, [Event(type="started"), Event(type="delta", text="ab"),
                                    Event(type="delta", index=1, text="c"),
                                    Event(type="done", result=result(["ab", "cd"], n=2))])
    events = asyncio.run(collect(sub.watch))
    assert events[:2] == [TextDelta(0, "ab"), TextDelta(1, "c")]
    assert isinstance(events[2], Finished) and isinstance(events[2].result, GenerateResult) and len(events) == 3
    assert counted(metrics, "llmhost_job_outcomes_total", endpoint="/v1/chat/completions", outcome="succeeded") == 1
    assert counted(metrics, "llmhost_job_outcomes_total", endpoint="/v1/chat/completions", outcome="cancelled") == 0
    assert counted(metrics, "llmhost_prompt_tokens_total", model="m") == 5  # one prompt, two choices
    assert counted(metrics, "llmhost_generation_tokens_total", model="m") == 4
    assert client.cancelled == []


def test_errors_are_events_and_leaving_early_cancels():
    client, metrics = Client(), Metrics()
    err = JobError("nope", status_code=400, code="context_length_exceeded")
    events = asyncio.run(collect(watched(client, metrics, [Event(type="error", error=err.to_dict())]).watch))
    assert len(events) == 1 and isinstance(events[0], Failed) and events[0].error.code == "context_length_exceeded"
    assert counted(metrics, "llmhost_job_outcomes_total", endpoint="/v1/chat/completions", outcome="failed") == 1

    async def leave_after_one(watch: JobWatch) -> None:
        async with watch:
            async for _ in watch:
                break
        await asyncio.sleep(0)  # the cancel runs as its own task

    client, metrics = Client(), Metrics()
    asyncio.run(leave_after_one(watched(client, metrics, [Event(type="delta", text="a")]).watch))
    assert client.cancelled == [JOB]
    assert counted(metrics, "llmhost_job_outcomes_total", endpoint="/v1/chat/completions", outcome="cancelled") == 1


def test_a_refusal_before_started_is_raised():
    client, metrics = Client(), Metrics()
    err = JobError("too long", status_code=400, code="context_length_exceeded")
    sub = watched(client, metrics, [Event(type="error", error=err.to_dict())])
    with pytest.raises(JobError) as e:
        asyncio.run(sub.watch.started())
    assert e.value.code == "context_length_exceeded" and client.cancelled == []
    assert counted(metrics, "llmhost_job_outcomes_total", endpoint="/v1/chat/completions", outcome="failed") == 1


def test_a_passed_deadline_is_a_timeout_event_and_cancels():
    client, metrics = Client(), Metrics()
    events = asyncio.run(collect(watched(client, metrics, [], deadline=-1).watch))
    assert len(events) == 1 and isinstance(events[0], Failed) and events[0].error.code == "request_timeout"
    assert counted(metrics, "llmhost_job_outcomes_total", endpoint="/v1/chat/completions", outcome="timeout") == 1
    assert client.cancelled == [JOB]


async def frames(sub: Submitted[GenerateResult], shape: StreamShape) -> list[str]:
    return [f.decode() async for f in stream_events(sub, shape)]


def test_chat_sse_contract_resends_lost_text():
    sub = watched(Client(), Metrics(), [Event(type="delta", text="Hel"), Event(type="done", result=result(["Hello"]))])
    out = asyncio.run(frames(sub, StreamShape("chat.completion.chunk", chat=True, include_usage=True)))
    assert all(f.startswith("data: ") and f.endswith("\n\n") for f in out) and out[-1] == "data: [DONE]\n\n"
    chunks = [json.loads(f[6:]) for f in out[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Hello"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]] == ["length"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 10


def test_chat_sse_error_after_the_200_then_done():
    err = JobError("worker gone", status_code=502, type="server_error", code="worker_lost")
    sub = watched(Client(), Metrics(), [Event(type="delta", text="a"), Event(type="error", error=err.to_dict())])
    out = asyncio.run(frames(sub, StreamShape("chat.completion.chunk", chat=True, include_usage=False)))
    assert json.loads(out[-2][6:]) == err.envelope() and out[-1] == "data: [DONE]\n\n"


def test_a_redis_blip_while_the_channel_is_quiet_keeps_the_stream_alive(monkeypatch):
    """Redis unreachable when the watcher looks at the record: it keeps waiting (bounded by the
    deadline) and the stream still ends with its result, one finish_reason and [DONE]."""
    import redis

    import tasks.queue.client as client_module

    monkeypatch.setattr(client_module, "POLL_SECONDS", 0.05)
    client, metrics = Client(), Metrics()
    looked = []

    async def unreachable(job_id: str) -> None:
        looked.append(job_id)
        raise redis.ConnectionError("Redis restarting")

    client.store.get = unreachable  # type: ignore[method-assign]
    sub = watched(client, metrics, [Event(type="started", job=JOB)])

    async def run() -> list[str]:
        await sub.watch.started()
        out = []

        async def later() -> None:
            await asyncio.sleep(0.3)  # several quiet polls fail first
            client.hub.open(JOB).put_nowait(Event(type="done", job=JOB, result=result(["hi"])))

        feeder = asyncio.ensure_future(later())
        async for frame in stream_events(sub, StreamShape("chat.completion.chunk", chat=True, include_usage=False)):
            out += [line[6:] for line in frame.decode().splitlines() if line.startswith("data: ")]
        await feeder
        return out

    frames = asyncio.run(run())
    assert len(looked) >= 2 and frames[-1] == "[DONE]"
    finishes = [c["choices"][0]["finish_reason"] for c in map(json.loads, frames[:-1]) if c["choices"]]
    assert finishes.count("length") == 1


def test_a_reply_message_carries_one_event_or_a_steps_events_in_order():
    """The worker sends one event as a JSON object and a step's events for one front as an array;
    the hub reads both, in order. What cannot be read is counted and skipped, and one bad event in
    an array (a type a newer worker sends) costs the others nothing."""
    one = Event(type="started", job="a").model_dump_json(exclude_defaults=True)
    many = [Event(type="delta", job=j, index=i, text=t).model_dump_json(exclude_defaults=True)
            for j, i, t in [("a", 0, "x"), ("b", 1, "y"), ("a", 0, "z")]]
    assert reply_message([one]) == one
    assert read_reply(one.encode()) == ([Event(type="started", job="a")], 0)
    events, unreadable = read_reply(reply_message(many).encode())
    assert [(e.job, e.index, e.text) for e in events] == [("a", 0, "x"), ("b", 1, "y"), ("a", 0, "z")] and not unreadable
    mixed = reply_message([many[0], '{"type": "tool_delta", "job": "b"}', many[2]])
    events, unreadable = read_reply(mixed)
    assert [e.text for e in events] == ["x", "z"] and unreadable == 1
    for bad in (b"not json", b"[1, 2", b'{"type": "nope"}'):
        assert read_reply(bad) == ([], 1)
    assert read_reply(b"[1, {}]") == ([], 2)
