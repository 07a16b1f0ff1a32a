"""The OpenAI Responses API through the real stack, with the official SDK: sync and streamed answers,
stored responses and conversations, background mode (poll, cancel, a stream resumed from another
API process after the first one died), and background responses that outlive a killed API process
and a SIGKILLed worker."""

from __future__ import annotations

import json
import shutil
import signal

import jsonschema
import openai
import pytest
from openai import OpenAI

from tests.conftest import TINY_CHATML, TINY_GENERIC, Stack
from tests.test_e2e_durability import start_ready_worker, wait_until

TINY = TINY_CHATML
ASK = "Tell me about the sea."
FINAL = ("completed", "incomplete", "failed", "cancelled")
# A copy of the generic tiny model with a worker of its own that decodes one sequence at a time:
# what it holds is known (one running, the rest queued), and killing it disturbs no other test.
SOLO = "acme/tiny-generic-responses"
LONG = {"model": SOLO, "input": "go", "max_output_tokens": 480, "temperature": 1.0}  # most of its 512 tokens
# Bounded strings, numbers and arrays in compact JSON: 300 tokens always finish the object, so
# `completed` is the grammar's guarantee, not the random model's luck.
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "pattern": "^[a-z]{1,8}$"},
                   "population": {"type": "integer", "minimum": 0, "maximum": 10**9},
                   "capital": {"type": "boolean"},
                   "tags": {"type": "array", "items": {"enum": ["old", "big", "wet"]}, "maxItems": 3}},
    "required": ["city", "population", "capital", "tags"],
    "additionalProperties": False,
}
JSON_FORMAT = {"format": {"type": "json_schema", "name": "city", "schema": SCHEMA, "strict": True}}
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather of a city", "strict": True,
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                                                           "unit": {"enum": ["celsius", "fahrenheit"]}},
                          "required": ["city", "unit"], "additionalProperties": False}}


def poll(client: OpenAI, response_id: str, until: tuple[str, ...] = FINAL, timeout: float = 120):
    return wait_until(lambda: (lambda r: r if r.status in until else None)(client.responses.retrieve(response_id)),
                      timeout, f"response {response_id} to be {until}")


def record(stack: Stack, job_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in stack.redis.hgetall(f"llmhost:job:{job_id}").items()}


def deltas(events) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def other_client(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def message_events(n_deltas: int) -> list[str]:
    return ["response.output_item.added", "response.content_part.added", *["response.output_text.delta"] * n_deltas,
            "response.output_text.done", "response.content_part.done", "response.output_item.done"]


@pytest.fixture(scope="module")
def solo(stack: Stack):
    if not (stack.models_dir / SOLO).exists():
        shutil.copytree(stack.models_dir / TINY_GENERIC, stack.models_dir / SOLO)
    workers = [start_ready_worker(stack, SOLO, LLMHOST_MAX_BATCH="1")[0]]
    yield workers  # a test that kills one appends its successor
    for proc in workers:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


def test_sync_response_is_the_openai_object_and_is_stored(client):
    r = client.responses.create(model=TINY, input=ASK, instructions="Be brief.", max_output_tokens=12, temperature=0,
                                metadata={"k": "v"}, reasoning={"effort": "low"}, extra_body={"vendor_field": 1})
    assert r.id.startswith("resp_") and r.object == "response" and r.status in ("completed", "incomplete")
    if r.status == "incomplete":
        assert r.incomplete_details.reason == "max_output_tokens"
    [message] = r.output
    assert message.type == "message" and message.role == "assistant" and message.content[0].type == "output_text"
    assert r.output_text == message.content[0].text
    assert 0 < r.usage.output_tokens <= 12 and r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert (r.metadata, r.instructions, r.max_output_tokens, r.temperature, r.store, r.background) == (
        {"k": "v"}, "Be brief.", 12, 0, True, False)
    assert client.responses.retrieve(r.id).model_dump() == r.model_dump()
    [item] = client.responses.input_items.list(r.id).data
    assert item.type == "message" and item.role == "user" and item.content[0].text == ASK


def test_stream_events_in_order_and_greedy_text_equals_sync(client):
    kw = dict(model=TINY, input=ASK, max_output_tokens=16, temperature=0)
    whole = client.responses.create(**kw)
    events = list(client.responses.create(stream=True, **kw))
    n = sum(e.type == "response.output_text.delta" for e in events)
    assert [e.type for e in events] == ["response.created", "response.in_progress", *message_events(n),
                                        f"response.{whole.status}"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert deltas(events) == whole.output_text == events[-1].response.output_text
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    assert client.responses.retrieve(events[-1].response.id).output_text == whole.output_text  # stored too


def test_background_response_is_queued_then_polled_to_the_sync_answer(client, stack):
    kw = dict(model=TINY, input=ASK, max_output_tokens=16, temperature=0)
    sync = client.responses.create(**kw)
    r = client.responses.create(background=True, **kw)
    assert r.status == "queued" and r.background and r.output == []
    done = poll(client, r.id)
    assert done.status == sync.status and done.output_text == sync.output_text
    assert done.usage.model_dump() == sync.usage.model_dump()
    assert record(stack, r.id)["class"] == "background"


def test_text_format_json_schema_is_valid_every_time(client):
    fmt = JSON_FORMAT
    for _ in range(3):
        r = client.responses.create(model=TINY, input="Describe Paris as JSON.", text=fmt, max_output_tokens=300,
                                    temperature=1.0)
        assert r.status == "completed", r.output_text
        jsonschema.validate(json.loads(r.output_text), SCHEMA)
        assert r.text.format.type == "json_schema"
    # Streamed through the SDK's own helper, which checks that the events add up (it needs `completed`).
    with client.responses.stream(model=TINY, input="Describe Paris as JSON.", text=fmt, max_output_tokens=300,
                                 temperature=0) as stream:
        text = deltas(list(stream))
        assert stream.get_final_response().output_text == text
    jsonschema.validate(json.loads(text), SCHEMA)


def test_previous_response_id_continues_a_function_call_round_trip(client):
    ask = "What is the weather in Paris?"
    first = client.responses.create(model=TINY, input=ask, tools=[WEATHER], max_output_tokens=60, temperature=0,
                                    tool_choice={"type": "function", "name": "get_weather"})
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.id and call.call_id
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    result = {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp": 21}'}
    kw = dict(model=TINY, tools=[WEATHER], tool_choice="none", max_output_tokens=8, temperature=0)
    second = client.responses.create(previous_response_id=first.id, input=[result], **kw)
    assert second.previous_response_id == first.id and second.status in ("completed", "incomplete")
    # The same conversation spelled out gives the same answer: the earlier turns came first.
    spelled = client.responses.create(input=[{"role": "user", "content": ask}, {
        "type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments}, result], **kw)
    assert (spelled.output_text, spelled.usage.input_tokens) == (second.output_text, second.usage.input_tokens)
    items = client.responses.input_items.list(second.id, order="asc")
    assert [i.type for i in items.data] == ["message", "function_call", "function_call_output"] and not items.has_more
    assert items.data[1].call_id == call.call_id and items.first_id == items.data[0].id
    page = client.responses.input_items.list(second.id, limit=2)  # newest first, two at a time
    assert [i.type for i in page.data] == ["function_call_output", "function_call"] and page.has_more
    assert [i.id for i in client.responses.input_items.list(second.id, limit=1)] == [i.id for i in items.data][::-1]
    third = client.responses.create(previous_response_id=second.id, input="Thanks.", **kw)  # a chain of three
    assert len(client.responses.input_items.list(third.id, limit=100).data) == 5


def test_bad_requests_are_400s_naming_the_param(client):
    fn = {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}
    cases = [(dict(background=True, store=False), "store"),
             (dict(input=[{"type": "item_reference", "id": "x"}]), "input[0].type"),
             (dict(input=[{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]),
              "input[0].content[0].type"),
             (dict(tools=[{"type": "web_search"}]), "tools[0].type"),
             (dict(tools=[fn], tool_choice={"type": "function", "name": "nope"}), "tool_choice"),
             (dict(text={"format": {"type": "yaml"}}), "text.format.type")]
    messages = []
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.responses.create(**{"model": TINY, "input": "hi", **extra})
        assert e.value.param == param, (extra, e.value.message)
        messages.append(e.value.message)
    assert "`item_reference`" in messages[1] and "`input_image`" in messages[2] and "`web_search`" in messages[3]
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=TINY, input="word " * 2000, truncation="disabled")
    assert e.value.code == "context_length_exceeded"
    r = client.responses.create(model=TINY, input="word " * 2000, background=True)  # in the background: failed
    failed = poll(client, r.id)
    assert failed.status == "failed" and failed.error.code == "context_length_exceeded"
    events = list(client.responses.retrieve(r.id, stream=True))  # its stream: an error event, then the end
    assert [e.type for e in events] == ["response.created", "response.in_progress", "error", "response.failed"]
    assert events[2].code == "context_length_exceeded" and events[-1].response.model_dump() == failed.model_dump()


def test_unknown_deleted_and_unstored_ids_are_404s(client):
    for call in (client.responses.retrieve, client.responses.cancel, client.responses.delete,
                 client.responses.input_items.list):
        with pytest.raises(openai.NotFoundError):
            call("resp_unknown")
    r = client.responses.create(model=TINY, input="hi", max_output_tokens=2)
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.retrieve(r.id)
    assert e.value.code == "response_not_found"
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model=TINY, input="hi", previous_response_id=r.id)
    assert e.value.param == "previous_response_id"
    unstored = client.responses.create(model=TINY, input="hi", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def status_of(stack: Stack, response_id: str) -> str:
    return record(stack, response_id).get("status", "")


def test_cancel_queued_running_and_ended_responses(client, stack, solo):
    responses = [client.responses.create(background=True, **LONG) for _ in range(4)]
    waiting = responses[-1]  # one sequence at a time: the last one waits behind the others
    wait_until(lambda: any(status_of(stack, r.id) == "running" for r in responses), 60, "one to run")
    assert status_of(stack, waiting.id) == "queued"
    assert client.responses.cancel(waiting.id).status == "cancelled"

    def cancel_a_running_one():  # should the running one end first, the next one runs: that one, then
        for r in responses[:-1]:
            if status_of(stack, r.id) == "running" and (cancelled := client.responses.cancel(r.id)).status == "cancelled":
                return cancelled
        return None
    stopped = wait_until(cancel_a_running_one, 60, "a running response to cancel")
    assert stopped.output == [] and client.responses.retrieve(stopped.id).status == "cancelled"
    for r in responses:
        client.responses.cancel(r.id)
    after = poll(client, client.responses.create(background=True, **{**LONG, "max_output_tokens": 4}).id)
    # The worker takes one job at a time: the next one ended, so the cancelled ones let go of it, short of their budget.
    assert after.status in ("completed", "incomplete")
    assert stack.redis.xlen(f"llmhost:events:{stopped.id}") < LONG["max_output_tokens"]
    assert "started_at" not in record(stack, waiting.id) and record(stack, waiting.id)["attempts"] == "0"  # never ran
    assert client.responses.cancel(after.id).model_dump() == after.model_dump()  # ended: unchanged


def test_stream_resumes_from_another_api_process_after_the_first_died(client, stack):
    url = stack.start_api("api-resume")
    events = []
    for event in other_client(url).responses.create(background=True, stream=True, model=TINY, input=ASK,
                                                    text=JSON_FORMAT, max_output_tokens=300, temperature=0):
        events.append(event)
        if event.type == "response.output_text.delta" and len(deltas(events)) >= 3 or event.type.endswith("ed"):
            break
    stack.procs["api-resume"].send_signal(signal.SIGKILL)
    stack.procs["api-resume"].wait(10)
    response_id, n = events[0].response.id, events[-1].sequence_number
    assert events[0].type == "response.created" and events[0].response.status == "queued"
    rest = list(client.responses.retrieve(response_id, stream=True, starting_after=n))
    assert [e.sequence_number for e in rest] == list(range(n + 1, n + 1 + len(rest)))
    assert rest[-1].type == "response.completed"  # the schema is bounded: always completed
    assert deltas(events) + deltas(rest) == rest[-1].response.output_text
    # From the first event: the same events under the same numbers, whoever reads them.
    again = list(client.responses.retrieve(response_id, stream=True))
    assert [e.model_dump() for e in again] == [e.model_dump() for e in events] + [e.model_dump() for e in rest]
    with client.responses.stream(response_id=response_id, starting_after=n) as stream:  # the SDK's resume
        assert [e.sequence_number for e in stream] == [e.sequence_number for e in rest]
        assert stream.get_final_response().output_text == rest[-1].response.output_text


def test_background_response_outlives_its_api_process(client, stack):
    url = stack.start_api("api-doomed")
    r = other_client(url).responses.create(background=True, model=TINY, input=ASK, max_output_tokens=200)
    stack.procs["api-doomed"].send_signal(signal.SIGKILL)
    stack.procs["api-doomed"].wait(10)
    done = poll(client, r.id)
    # The worker ran it to the end (its usage counted the prompt). Not `output_tokens > 0`: the random
    # tiny model samples its end of turn first now and then (a fresh-clone run got 0 tokens once).
    assert done.status in ("completed", "incomplete") and done.usage.input_tokens > 0


@pytest.mark.faults
def test_background_responses_outlive_a_killed_worker_and_complete_once(client, stack, solo):
    responses = [client.responses.create(background=True, **LONG) for _ in range(3)]

    def generating():
        return next((r for r in responses if status_of(stack, r.id) == "running"
                     and stack.redis.xlen(f"llmhost:events:{r.id}") >= 5), None)
    victim = wait_until(generating, 60, "a response to be generating")
    solo[0].send_signal(signal.SIGKILL)  # mid-response: its first attempt's events are kept, unfinished
    solo.append(start_ready_worker(stack, SOLO, LLMHOST_MAX_BATCH="1")[0])
    done = {r.id: poll(client, r.id) for r in responses}
    assert all(d.status in ("completed", "incomplete") for d in done.values())
    assert all(int(record(stack, rid)["attempts"]) <= 2 for rid in done) and record(stack, victim.id)["attempts"] == "2"
    kept = stack.redis.xrange(f"llmhost:events:{victim.id}")
    assert {int(fields[b"a"]) for _, fields in kept} == {1, 2}  # both attempts' events are kept
    # A reader shows the second attempt only, once, numbered from 0 (sampled: the two runs differ).
    final = done[victim.id]
    events = list(client.responses.retrieve(victim.id, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events].count(f"response.{final.status}") == 1 and events[-1].response.id == victim.id
    assert deltas(events) == final.output_text == events[-1].response.output_text
    assert final.usage.output_tokens == events[-1].response.usage.output_tokens


@pytest.mark.faults
def test_a_watched_background_stream_whose_worker_dies_fails_once_for_every_reader(client, stack, solo):
    """Text a client saw cannot be taken back: the job is not run again but fails `worker_lost`, and a
    reader that comes later gets exactly the events the first one got."""
    seen = []
    with client.responses.create(background=True, stream=True, **LONG) as stream:
        for event in stream:
            seen.append(event)
            if event.type == "response.output_text.delta" and len(seen) == 7:
                solo[-1].send_signal(signal.SIGKILL)
    solo.append(start_ready_worker(stack, SOLO, LLMHOST_MAX_BATCH="1")[0])
    assert [e.type for e in seen[-2:]] == ["error", "response.failed"] and seen[-2].code == "worker_lost"
    response_id = seen[0].response.id
    assert client.responses.retrieve(response_id).status == "failed" and record(stack, response_id)["attempts"] == "1"
    again = list(client.responses.retrieve(response_id, stream=True))
    assert [e.model_dump() for e in again] == [e.model_dump() for e in seen]


def test_stored_responses_are_bounded_oldest_first(client, stack):
    small = other_client(stack.start_api("api-small-store", LLMHOST_MAX_STORED_RESPONSES="3"))
    made = [small.responses.create(model=TINY, input="hi", max_output_tokens=2).id for _ in range(4)]
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made[0])  # the oldest went when the fourth came
    assert [client.responses.retrieve(rid).id for rid in made[1:]] == made[1:]
    stack.procs["api-small-store"].terminate()
