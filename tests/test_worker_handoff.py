"""The worker's last hand-off, in process: a generation job's final record (its result, and the
`done` event to its reply channel) is written by the engine thread in the round trip of the step
that ended its last sequence; the job's pool thread only returns. Where the engine could not write
it, or the job did not simply succeed (a cancel, an error), the pool thread writes it, as before.

A real Redis and a tiny model; the worker's runtime without Celery around it (``claim`` is what
Celery's ``task_received`` calls, ``generate`` what a pool thread runs).
"""

from __future__ import annotations

import gc
import json
import threading
import time
import uuid
import weakref
from pathlib import Path

import pytest
import redis

from tasks.contract.payloads import GenerateJob, Message, SamplingParams, read_reply
from tasks.contract.records import job_key
from tasks.contract.settings import Settings
from tasks.supervisor.redis_server import RedisServer
from tests.conftest import TINY_CHATML


@pytest.fixture(scope="module")
def runtime(tmp_path_factory, tiny_models: Path):
    from tasks.worker.runtime import WorkerRuntime

    server = RedisServer(tmp_path_factory.mktemp("handoff-redis"), persist=False).start()
    settings = Settings(redis_url=server.url, models_dir=tiny_models, dtype="float32", torch_threads=1)
    rt = WorkerRuntime(settings, TINY_CHATML, tiny_models / TINY_CHATML, f"handoff-{uuid.uuid4().hex[:6]}")
    rt.start()
    try:
        yield rt
    finally:
        rt.stop()
        server.stop()
        gc.unfreeze()  # the worker froze this test process's heap


@pytest.fixture
def pool_moves(runtime, monkeypatch) -> list[str]:
    """The statuses the pool thread's own moves set (the engine thread writes through ``move_on``)."""
    moves: list[str] = []
    move = runtime.jobs.move

    def recording(job_id: str, status: str, **kwargs):
        moves.append(status)
        return move(job_id, status, **kwargs)
    monkeypatch.setattr(runtime.jobs, "move", recording)
    return moves


def queued(rt, channel: str, **fields) -> GenerateJob:
    """A job recorded as the front records it (queued), claimed on arrival as Celery's consumer does."""
    fields.setdefault("messages", [Message(role="user", content="Hello there")])
    job = GenerateJob(job_id=f"job-{uuid.uuid4().hex}", model=TINY_CHATML, deadline=time.time() + 60,
                      reply_to=channel, **fields)
    rt.redis.hset(job_key(job.job_id), mapping={"status": "queued", "ttl": 600, "model": TINY_CHATML})
    rt.claim(job.job_id)
    return job


def record(rt, job: GenerateJob) -> dict:
    return {k.decode(): v.decode() for k, v in rt.redis.hgetall(job_key(job.job_id)).items()}


def messages(pubsub: redis.client.PubSub, seconds: float = 0.3) -> list[list[dict]]:
    """The events of each message on the channel, as the front's hub reads them."""
    out, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        msg = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
        if msg:
            events, unreadable = read_reply(msg["data"])
            assert not unreadable
            out.append([e.model_dump(exclude_defaults=True) for e in events])
    return out


def events(pubsub: redis.client.PubSub, job: GenerateJob, seconds: float = 0.3) -> list[dict]:
    return [e for events in messages(pubsub, seconds) for e in events if e.get("job") == job.job_id]


def listening(rt) -> tuple[str, redis.client.PubSub]:
    channel = f"handoff-{uuid.uuid4().hex}"
    pubsub = rt.redis.pubsub()
    pubsub.subscribe(channel)
    pubsub.get_message(timeout=1)  # the subscription's confirmation
    return channel, pubsub


@pytest.mark.parametrize("stream", [False, True])
def test_the_engine_thread_writes_a_finished_jobs_record(runtime, pool_moves, stream) -> None:
    channel, pubsub = listening(runtime)
    job = queued(runtime, channel, n=3, stream=stream,
                 sampling=SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    runtime.generate(job)
    rec = record(runtime, job)
    assert rec["status"] == "succeeded" and "succeeded" not in pool_moves
    result = json.loads(rec["result"])
    assert [o["index"] for o in result["outputs"]] == [0, 1, 2]  # every choice, not the first to end
    assert all(o["completion_tokens"] == 5 and o["finish_reason"] == "length" for o in result["outputs"])
    seen = events(pubsub, job)
    assert [e["type"] for e in seen if e["type"] == "done"] == ["done"]
    assert seen[-1]["type"] == "done"  # after every delta of the stream
    if stream:
        text = {i: "".join(e.get("text", "") for e in seen if e["type"] == "delta" and e.get("index", 0) == i)
                for i in range(3)}
        assert text == {o["index"]: o["text"] for o in result["outputs"]}
    assert runtime.redis.smembers(f"llmhost:held:{runtime.name}") == set()


def test_a_steps_deltas_for_one_front_go_out_as_one_message(runtime) -> None:
    """Two streamed jobs of one front (one reply channel), three choices each: a step publishes
    one message for all of their new text, not one per sequence, and nothing is lost or reordered."""
    channel, pubsub = listening(runtime)
    jobs = [queued(runtime, channel, n=3, stream=True, sampling=SamplingParams(temperature=0, max_tokens=6,
                                                                            ignore_eos=True)) for _ in range(2)]
    pools = [threading.Thread(target=runtime.generate, args=(job,)) for job in jobs]
    for pool in pools:
        pool.start()
    for pool in pools:
        pool.join(60)
        assert not pool.is_alive()
    seen = messages(pubsub)  # both jobs ended: every message is on the channel already
    deltas = [m for m in seen if any(e["type"] == "delta" for e in m)]
    # At most a message per step (6 tokens each; the two jobs may start a step or two apart), each
    # with the text of every sequence that had some (a token's text may wait for the next one's).
    assert len(deltas) <= 2 * 6 + 2 and max(len(m) for m in deltas) >= 3
    for job in jobs:
        result = json.loads(record(runtime, job)["result"])
        mine = [e for m in seen for e in m if e["job"] == job.job_id]
        assert [e["type"] for e in mine if e["type"] != "delta"] == ["started", "done"] and mine[-1]["type"] == "done"
        text = {i: "".join(e.get("text", "") for e in mine if e["type"] == "delta" and e.get("index", 0) == i)
                for i in range(3)}
        assert text == {o["index"]: o["text"] for o in result["outputs"]}


def test_the_cancel_check_aborts_ended_jobs_and_past_deadlines_and_trusts_unread_statuses(runtime,
                                                                                          monkeypatch) -> None:
    """The statuses a step's round trip read (or failed to): a job no longer running or gone is
    aborted, one whose status could not be read counts as running (an error in its place, or none
    at all when the round trip failed), unless its deadline passed."""
    from tasks.worker.engine_loop import SeqWaiter

    aborted: list[str] = []
    monkeypatch.setattr(runtime.loop.engine, "abort", aborted.append)  # the engine thread is idle here
    later, past = time.time() + 60, time.time() - 1
    checked = [(name, SeqWaiter(f"job-{name}", 0, None, deadline)) for name, deadline in
               [("running", later), ("cancelled", later), ("gone", later), ("unread", later), ("late", past),
                ("missing", later), ("missing-late", past)]]
    runtime.loop._abort_ended(checked, [b"running", b"cancelled", None, redis.ResponseError("x"), b"running"])
    assert aborted == ["cancelled", "gone", "late", "missing-late"]


def test_a_job_whose_sequences_end_in_different_steps_is_recorded_once_all_have(runtime, pool_moves) -> None:
    # Two prompts of different lengths, each to the end of the context: their last steps differ.
    job = queued(runtime, "nobody", messages=None, prompts=["one", "one two three four five six seven"],
                 sampling=SamplingParams(temperature=0, ignore_eos=True))
    runtime.generate(job)
    rec = record(runtime, job)
    assert rec["status"] == "succeeded" and "succeeded" not in pool_moves
    outputs = json.loads(rec["result"])["outputs"]
    assert [o["index"] for o in outputs] == [0, 1]
    totals = {o["prompt_tokens"] + o["completion_tokens"] for o in outputs}
    assert len(totals) == 1 and outputs[0]["completion_tokens"] > outputs[1]["completion_tokens"]


def test_a_job_that_asks_for_logprobs_is_recorded_by_its_pool_thread(runtime, pool_moves) -> None:
    job = queued(runtime, "nobody", sampling=SamplingParams(temperature=0, max_tokens=4, logprobs=2))
    runtime.generate(job)
    assert record(runtime, job)["status"] == "succeeded" and pool_moves.count("succeeded") == 1


def test_a_cancelled_job_is_recorded_by_its_pool_thread(runtime, pool_moves) -> None:
    job = queued(runtime, "nobody", sampling=SamplingParams(temperature=0, ignore_eos=True))  # to the context's end
    pool = threading.Thread(target=runtime.generate, args=(job,))
    pool.start()
    end = time.monotonic() + 10
    while runtime.loop.stats()["running"] == 0 and time.monotonic() < end:
        time.sleep(0.005)
    runtime.jobs.move(job.job_id, "cancelled", error={"message": "cancelled by the client"})
    pool.join(30)
    assert not pool.is_alive() and record(runtime, job)["status"] == "cancelled"
    assert "succeeded" not in pool_moves


def test_a_final_record_the_engine_could_not_write_is_written_by_the_pool_thread(runtime, pool_moves,
                                                                                  monkeypatch) -> None:
    channel, pubsub = listening(runtime)
    job = queued(runtime, channel, sampling=SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))
    # As when Redis restarted since the claim and lost its scripts: the step's move answers NOSCRIPT.
    monkeypatch.setattr(runtime.jobs, "move_on", lambda pipe, *args, **kwargs: pipe.evalsha("0" * 40, 0))
    runtime.generate(job)
    rec = record(runtime, job)
    assert rec["status"] == "succeeded" and pool_moves == ["running", "succeeded"]  # the claim, then its end
    assert json.loads(rec["result"])["outputs"][0]["completion_tokens"] == 16
    assert [e["type"] for e in events(pubsub, job)] == ["done"]


def test_the_loaded_heap_is_frozen_and_a_reload_frees_the_old_model(runtime) -> None:
    """After a load the process's objects are out of the cyclic collector (no 150 ms full collections
    while serving); a reload must still free the old model (frozen objects are never collected
    as cycles: the reload unfreezes them first)."""
    assert gc.get_freeze_count() > 0
    old = weakref.ref(runtime.handler.model)
    runtime._reload(runtime.options)  # the same options: a fresh load of the same model
    gc.collect()
    assert old() is None
    assert gc.get_freeze_count() > 0 and runtime.handler is not None
