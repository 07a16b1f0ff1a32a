"""The Anthropic Messages API (``/v1/messages``): the request mapping in process, then the official
``anthropic`` SDK against the real stack: messages, streams, tools, token counts, keys and errors."""

from __future__ import annotations

import json
import re
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import anthropic
import httpx
import jsonschema
import pytest

from api.anthropic.errors import envelope, error_type
from api.anthropic.streaming import PING, keepalive
from api.schemas.anthropic import CountTokensRequest, MessagesRequest
from api.security import presented_keys
from tasks.contract.errors import JobError
from tasks.contract.payloads import Message, TokenizeJob, ToolCall
from tasks.contract.records import queue_name
from tests.conftest import SMOL, TINY_CHATML, TINY_LLAMA3, TINY_MISTRAL

try:
    import handlers.constraints  # noqa: F401

    HAVE_CONSTRAINTS = True
except ImportError:  # pragma: no cover
    HAVE_CONSTRAINTS = False
needs_constraints = pytest.mark.xfail(not HAVE_CONSTRAINTS, reason="handlers/constraints.py (xgrammar) not importable")

WEATHER = {"name": "get_weather", "description": "Weather of a city",
           "input_schema": {"type": "object", "properties": {
               "city": {"type": "string", "maxLength": 8},  # bounded: a random model ends the call in time
               "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
               "required": ["city", "unit"]}}
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
SEA = [{"role": "user", "content": "Tell me about the sea."}]
ASK = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
# This SDK has no sampling arguments any more (Claude's newest models dropped them); the API takes them.
GREEDY = {"temperature": 0}
MESSAGE_ID = re.compile(r"msg_[0-9a-f]{32}")
TOOL_USE_ID = re.compile(r"toolu_[A-Za-z0-9_]+")
HISTORY = USER + [
    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_abc", "name": "get_weather",
                                       "input": {"city": "Paris", "unit": "celsius"}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_abc", "content": "21 C"}]}]


# --- in process: requests → job data, errors → envelopes ---------------------------------------------

def test_blocks_become_the_job_messages():
    req = MessagesRequest.model_validate({
        "model": "m", "max_tokens": 5, "system": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
        "messages": HISTORY[:2] + [
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_abc", "is_error": True,
                                          "content": [{"type": "text", "text": "no"}]}, {"type": "text", "text": "Go on."}]}],
        "tools": [WEATHER], "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "thinking": {"type": "enabled", "budget_tokens": 1024}, "metadata": {"user_id": "u"}, "service_tier": "auto",
        "stop_sequences": ["END"], "temperature": 0, "top_k": 5})
    job = req.to_job("msg_1", 0.0, None)
    assert job.messages == [
        Message(role="system", content="A\nB"), Message(role="user", content=USER[0]["content"]),
        Message(role="assistant", content="", tool_calls=[
            ToolCall(id="toolu_abc", name="get_weather", arguments='{"city": "Paris", "unit": "celsius"}')]),
        Message(role="tool", content="Error: no", tool_call_id="toolu_abc"), Message(role="user", content="Go on.")]
    assert job.tools == [{"name": "get_weather", "description": "Weather of a city", "parameters": WEATHER["input_schema"]}]
    assert job.tool_choice == "required" and job.parallel_tool_calls is False
    assert job.sampling.stop == ["END"] and job.sampling.greedy and job.sampling.top_k == 5 and job.sampling.max_tokens == 5
    named = MessagesRequest.model_validate({"model": "m", "max_tokens": 1, "messages": USER, "tools": [WEATHER],
                                            "tool_choice": {"type": "tool", "name": "get_weather"}}).to_job("j", 0, None)
    assert named.tool_choice == {"name": "get_weather"} and named.parallel_tool_calls
    # Counted by a tokenize job when no tools are rendered, by the generation's own rendering otherwise.
    count = {"model": "m", "messages": HISTORY, "tools": [WEATHER]}
    assert isinstance(CountTokensRequest.model_validate({**count, "tool_choice": {"type": "none"}}).to_job("j", 0, None),
                      TokenizeJob)
    gen = CountTokensRequest.model_validate(count).to_job("j", 0, None)
    assert not isinstance(gen, TokenizeJob) and gen.sampling.max_tokens == 1 and gen.tools


@pytest.mark.parametrize("body,param", [
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image", "source": {}}]}]},
     "messages[0].content[1]"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [
        {"type": "image", "source": {}}]}]}]}, "messages[0].content[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]},
     "messages[0].content[0]"),
    ({"messages": USER + [{"role": "assistant", "content": "The weather is"}]}, "messages[1]"),
    ({"messages": USER, "system": [{"type": "document"}]}, "system[0]"),
    ({"messages": USER, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
    ({"messages": USER, "tools": [{"name": "f"}]}, "tools[0].input_schema"),
    ({"messages": USER, "tools": [WEATHER, WEATHER]}, "tools[1].name"),
    ({"messages": USER, "tool_choice": {"type": "any"}}, "tool_choice"),
    ({"messages": USER, "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice.name"),
    ({"messages": USER, "tool_choice": {"type": "required"}}, "tool_choice.type"),
])
def test_refusals_name_what_they_refuse(body, param):
    with pytest.raises(JobError) as e:
        MessagesRequest.model_validate({"model": "m", "max_tokens": 1, **body})
    assert e.value.status_code == 400 and e.value.param == param and param in e.value.message


def test_statuses_map_to_anthropic_error_types():
    types = {s: error_type(s) for s in (400, 401, 403, 404, 405, 413, 429, 500, 503, 504)}
    assert types == {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                     404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
                     429: "rate_limit_error", 500: "api_error", 503: "overloaded_error", 504: "timeout_error"}
    assert envelope(JobError("no", status_code=429)) == {"type": "error", "error": {"type": "rate_limit_error",
                                                                                    "message": "no"}}


def test_the_periodic_ping_is_the_ping_event():
    assert keepalive().encode() == PING == b'event: ping\ndata: {"type":"ping"}\n\n'


def test_keys_are_read_from_bearer_and_x_api_key():
    assert presented_keys([(b"x-api-key", b" k1 ")]) == ["k1"]
    assert presented_keys([(b"authorization", b"Bearer k2"), (b"x-api-key", b"k1")]) == ["k2", "k1"]
    assert presented_keys([(b"authorization", b"Basic k2"), (b"x-api-key", b"")]) == []


# --- through the stack, with the SDK ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def claude(stack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.base_url, api_key="x", max_retries=0, timeout=120)


def text_of(message: Any) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def sse_events(response: httpx.Response) -> list[tuple[str, dict]]:
    """(event name, data) of each event of a raw stream."""
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
    return events


def wire(kw: dict[str, Any], **more: Any) -> dict[str, Any]:
    """The JSON body the SDK sends for ``kw`` (its ``extra_body`` merged in)."""
    return {**{k: v for k, v in kw.items() if k != "extra_body"}, **kw.get("extra_body", {}), **more}


def test_create_answers_with_a_message_object(claude, client, http):
    m = claude.messages.create(model=SMOL, max_tokens=100, extra_body=GREEDY, messages=ASK)
    assert MESSAGE_ID.fullmatch(m.id) and m.type == "message" and m.role == "assistant" and m.model == SMOL
    [block] = m.content
    assert block.type == "text" and "Paris" in block.text
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    assert m.usage.input_tokens > 0 and 0 < m.usage.output_tokens <= 100
    view = http.get(f"/v1/jobs/{m.id}").json()  # its id is its job's
    assert view["endpoint"] == "/v1/messages" and view["result"]["content"] == [{"type": "text", "text": block.text}]
    # The same job as the OpenAI route's: the same prompt, the same greedy answer.
    oa = client.chat.completions.create(model=SMOL, max_tokens=100, temperature=0, messages=ASK)
    assert block.text == oa.choices[0].message.content and m.usage.input_tokens == oa.usage.prompt_tokens


def test_system_prompt_as_string_or_blocks(claude, client):
    kw: dict[str, Any] = dict(model=TINY_CHATML, max_tokens=8, extra_body=GREEDY, messages=SEA)
    plain = claude.messages.create(**kw)
    terse = claude.messages.create(system="You are terse.", **kw)
    blocks = claude.messages.create(system=[{"type": "text", "text": "You are terse."}], **kw)
    assert terse.content == blocks.content and terse.usage == blocks.usage
    assert terse.usage.input_tokens > plain.usage.input_tokens
    oa = client.chat.completions.create(model=TINY_CHATML, max_tokens=8, temperature=0,
                                        messages=[{"role": "system", "content": "You are terse."}, *SEA])
    assert text_of(terse) == oa.choices[0].message.content and terse.usage.input_tokens == oa.usage.prompt_tokens


def test_max_tokens_and_stop_sequences(claude):
    kw: dict[str, Any] = dict(model=SMOL, extra_body=GREEDY, messages=SEA)
    full = claude.messages.create(max_tokens=30, **kw)
    assert full.stop_reason == "max_tokens" and full.usage.output_tokens == 30 and full.stop_sequence is None
    text = text_of(full)
    stop = text[len(text) // 2:len(text) // 2 + 4]  # from the greedy answer: the model is bound to write it
    cut = claude.messages.create(max_tokens=30, stop_sequences=["\x00never", stop], **kw)
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    assert text_of(cut) == text[:text.index(stop)]
    with claude.messages.stream(max_tokens=30, stop_sequences=["\x00never", stop], **kw) as s:
        streamed = s.get_final_message()
    assert streamed.model_dump(exclude={"id"}) == cut.model_dump(exclude={"id"})


BLOCK = r"(content_block_start (content_block_delta )+content_block_stop )"


def test_stream_events_in_order_and_the_helper_assembles_the_message(claude, stack):
    kw: dict[str, Any] = dict(model=SMOL, max_tokens=60, extra_body=GREEDY, messages=ASK)
    whole = claude.messages.create(**kw)
    with httpx.stream("POST", f"{stack.base_url}/v1/messages", json=wire(kw, stream=True), timeout=120,
                      headers={"anthropic-version": "2023-06-01"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert all(data["type"] == name for name, data in events)
    names = [n for n in events if n[0] != "ping"]
    assert [n for n, _ in events[:2]] == ["message_start", "ping"]
    assert re.fullmatch(f"message_start {BLOCK}+message_delta message_stop ", "".join(n + " " for n, _ in names))
    start = events[0][1]["message"]
    assert MESSAGE_ID.fullmatch(start["id"]) and start["content"] == [] and start["model"] == SMOL
    blocks = [d for n, d in events if n.startswith("content_block")]
    assert [d["index"] for d in blocks if d["type"] == "content_block_start"] == [0]
    assert {d["delta"]["type"] for d in blocks if d["type"] == "content_block_delta"} == {"text_delta"}
    final = events[-2][1]
    assert final["delta"] == {"stop_reason": whole.stop_reason, "stop_sequence": None}
    assert final["usage"]["input_tokens"] == whole.usage.input_tokens
    with claude.messages.stream(extra_headers={"anthropic-beta": "fine-grained-tool-streaming-2025-05-14"}, **kw) as s:
        text = "".join(s.text_stream)
        helper = s.get_final_message()
    assert text == text_of(whole)
    assert helper.model_dump(exclude={"id"}) == whole.model_dump(exclude={"id"})
    raw = [e.type for e in claude.messages.create(stream=True, **kw)]  # the SDK skips pings
    assert raw == [n for n, _ in names]


def partial_inputs(events: list[tuple[str, dict]]) -> dict[int, str]:
    pieces: dict[int, str] = {}
    for name, data in events:
        if name == "content_block_delta" and data["delta"]["type"] == "input_json_delta":
            pieces[data["index"]] = pieces.get(data["index"], "") + data["delta"]["partial_json"]
    return pieces


@needs_constraints
@pytest.mark.parametrize("model,choice", [(TINY_CHATML, {"type": "tool", "name": "get_weather"}),
                                          (TINY_MISTRAL, {"type": "any"})])
def test_forced_tool_use_validates_and_streams_the_same_input(claude, stack, model, choice):
    kw: dict[str, Any] = dict(model=model, max_tokens=60, extra_body=GREEDY, messages=USER, tools=[WEATHER], tool_choice=choice)
    whole = claude.messages.create(**kw)
    assert whole.stop_reason == "tool_use" and whole.stop_sequence is None
    [call] = whole.content
    assert call.type == "tool_use" and call.name == "get_weather" and TOOL_USE_ID.fullmatch(call.id)
    jsonschema.validate(call.input, WEATHER["input_schema"])
    with httpx.stream("POST", f"{stack.base_url}/v1/messages", json=wire(kw, stream=True), timeout=120) as r:
        events = sse_events(r)
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert [(b["type"], b["name"], b["input"]) for b in starts] == [("tool_use", "get_weather", {})]
    assert {i: json.loads(p) for i, p in partial_inputs(events).items()} == {0: call.input}
    with claude.messages.stream(**kw) as s:
        helper = s.get_final_message()
    assert [(b.type, b.name, b.input) for b in helper.content] == [("tool_use", "get_weather", call.input)]
    assert helper.stop_reason == "tool_use" and helper.usage == whole.usage


@pytest.mark.parametrize("model", [TINY_CHATML, TINY_MISTRAL, SMOL])
def test_tool_result_round_trip_is_the_openai_job(claude, client, model):
    m = claude.messages.create(model=model, max_tokens=8, extra_body=GREEDY, messages=HISTORY, tools=[WEATHER])
    assert m.stop_reason in ("end_turn", "max_tokens", "tool_use")
    oa = client.chat.completions.create(model=model, max_tokens=8, temperature=0, tools=[{"type": "function", "function": {
        "name": "get_weather", "description": WEATHER["description"], "parameters": WEATHER["input_schema"]}}], messages=USER + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "toolu_abc", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_abc", "content": "21 C"}])
    assert m.usage.input_tokens == oa.usage.prompt_tokens and text_of(m) == (oa.choices[0].message.content or "")
    assert [(b.name, b.input) for b in m.content if b.type == "tool_use"] == [
        (c.function.name, json.loads(c.function.arguments)) for c in oa.choices[0].message.tool_calls or ()]
    as_blocks = [*HISTORY[:2], {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_abc",
                                                             "content": [{"type": "text", "text": "21 C"}]}]}]
    again = claude.messages.create(model=model, max_tokens=8, extra_body=GREEDY, messages=as_blocks, tools=[WEATHER])
    assert again.usage.input_tokens == m.usage.input_tokens


@pytest.mark.parametrize("extra", [
    pytest.param({"system": "Be brief."}, id="system"),
    pytest.param({"tools": [WEATHER]}, id="tools"),
    pytest.param({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "get_weather"}}, id="forced",
                 marks=needs_constraints),
    pytest.param({"tools": [WEATHER], "tool_choice": {"type": "none"}}, id="tools-off"),
    pytest.param({"messages": HISTORY}, id="history"),
])
def test_count_tokens_is_the_input_tokens_of_the_same_request(claude, extra):
    kw: dict[str, Any] = {"model": TINY_CHATML, "messages": USER, **extra}
    counted = claude.messages.count_tokens(**kw).input_tokens
    assert counted == claude.messages.create(max_tokens=1, extra_body=GREEDY, **kw).usage.input_tokens
    if "tools" in extra:  # tools are counted when they are rendered, and only then
        bare = claude.messages.count_tokens(model=TINY_CHATML, messages=kw["messages"]).input_tokens
        assert (counted > bare) == (extra.get("tool_choice") != {"type": "none"})


# --- keys and errors -------------------------------------------------------------------------------------

def anthropic_envelope(r: httpx.Response, status: int, kind: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body == {"type": "error", "error": {"type": kind, "message": body["error"]["message"]}}
    assert body["error"]["message"]
    return body["error"]["message"]


def test_x_api_key_beside_bearer(stack):
    url = stack.start_api("api-anthropic-keys", LLMHOST_API_KEYS="k1")
    count = dict(model=TINY_CHATML, messages=USER)
    by_header = anthropic.Anthropic(base_url=url, default_headers={"x-api-key": "k1"}, max_retries=0)
    assert by_header.messages.count_tokens(**count).input_tokens > 0
    bearer = anthropic.Anthropic(base_url=url, auth_token="k1", max_retries=0)
    assert bearer.messages.count_tokens(**count).input_tokens > 0
    with pytest.raises(anthropic.AuthenticationError) as e:
        anthropic.Anthropic(base_url=url, default_headers={"x-api-key": "k2"}, max_retries=0).messages.count_tokens(**count)
    assert e.value.status_code == 401 and e.value.type == "authentication_error"
    missing = httpx.post(f"{url}/v1/messages", json={**count, "max_tokens": 1})
    assert "x-api-key" in anthropic_envelope(missing, 401, "authentication_error")
    # The same keys on the OpenAI routes, which keep their own envelope.
    assert httpx.get(f"{url}/v1/models", headers={"x-api-key": "k1"}).status_code == 200
    refused = httpx.get(f"{url}/v1/models", headers={"x-api-key": "k2"})
    assert refused.status_code == 401 and set(refused.json()) == {"error"} and refused.json()["error"]["code"] == "invalid_api_key"


def test_errors_are_the_sdk_typed_exceptions(claude, http):
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.post("/v1/messages", body={"model": TINY_CHATML, "messages": USER}, cast_to=object)
    assert bad.value.type == "invalid_request_error" and "max_tokens" in str(bad.value.api_message)
    with pytest.raises(anthropic.BadRequestError) as image:
        claude.messages.create(model=TINY_CHATML, max_tokens=1, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}])
    assert "messages[0].content[0]" in str(image.value.api_message)
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="acme/nope", max_tokens=1, messages=USER, stream=True)
    assert missing.value.type == "not_found_error"
    with pytest.raises(anthropic.ServiceUnavailableError) as unserved:
        claude.messages.create(model=TINY_LLAMA3, max_tokens=1, messages=USER)
    assert unserved.value.type == "overloaded_error" and unserved.value.response.headers["retry-after"]
    assert isinstance(unserved.value, anthropic.InternalServerError)
    long = [{"role": "user", "content": "sea " * 2000}]  # the tiny models have 512 positions
    with pytest.raises(anthropic.BadRequestError) as too_long:  # refused at once: an HTTP error, not an event
        claude.messages.create(model=TINY_CHATML, max_tokens=1, messages=long, stream=True)
    assert too_long.value.type == "invalid_request_error"
    anthropic_envelope(http.post("/v1/messages", json={"model": TINY_CHATML, "max_tokens": 1, "messages": USER,
                                                       "temperature": 5}), 400, "invalid_request_error")
    anthropic_envelope(http.post("/v1/messages/count_tokens", content=b"{no", headers={"content-type": "application/json"}),
                       400, "invalid_request_error")
    anthropic_envelope(http.get("/v1/messages"), 405, "invalid_request_error")
    anthropic_envelope(http.get("/v1/messages/nope"), 404, "not_found_error")
    openai_error = http.post("/v1/chat/completions", json={"model": "acme/nope", "messages": USER})
    assert openai_error.status_code == 404 and set(openai_error.json()["error"]) == {"message", "type", "param", "code"}


def test_large_body_is_413_in_the_anthropic_envelope(stack):
    url = stack.start_api("api-anthropic-small", LLMHOST_MAX_BODY_BYTES="2048")
    big = [{"role": "user", "content": "x" * 4000}]
    with pytest.raises(anthropic.APIStatusError) as e:
        anthropic.Anthropic(base_url=url, api_key="x", max_retries=0).messages.create(
            model=TINY_CHATML, max_tokens=1, messages=big)
    assert e.value.status_code == 413 and e.value.type == "request_too_large"
    chunked = httpx.post(f"{url}/v1/messages", headers={"content-type": "application/json"},
                         content=iter([json.dumps({"model": TINY_CHATML, "max_tokens": 1, "messages": big}).encode()]))
    assert "content-length" not in chunked.request.headers
    anthropic_envelope(chunked, 413, "request_too_large")


# --- a worker that stops taking work: pings, a full queue, an error after the 200 ----------------------

PAUSED = "acme/tiny-chatml-paused"


@pytest.fixture(scope="module")
def paused(stack):
    """A worker of its own model that the tests stop (SIGSTOP: alive, not working) and resume. Its
    presence lasts a minute, so a stopped worker still counts as serving its model."""
    shutil.copytree(stack.models_dir / TINY_CHATML, stack.models_dir / PAUSED)
    proc = stack.start_worker(PAUSED, LLMHOST_HEARTBEAT_TTL="60")
    end = time.monotonic() + 90
    while not stack.ready_workers().get(PAUSED) and time.monotonic() < end:
        time.sleep(0.2)
    assert stack.ready_workers().get(PAUSED), "worker not ready"
    yield proc
    proc.terminate()


@contextmanager
def stopped(proc) -> Iterator[None]:
    proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGCONT)


def test_stream_pings_while_its_job_waits(stack, paused):
    body = {"model": PAUSED, "max_tokens": 8, "temperature": 0, "messages": SEA, "stream": True}
    with httpx.stream("POST", f"{stack.base_url}/v1/messages", json=body, timeout=60) as r:
        lines = r.iter_lines()
        with stopped(paused):
            first = [next(lines) for _ in range(6)]  # two events, each "event:", "data:" and a blank line
        rest = list(lines)
    assert r.status_code == 200
    assert [ln for ln in first if ln.startswith("event:")] == ["event: message_start", "event: ping"]
    names = "".join(ln[7:] + " " for ln in rest if ln.startswith("event: ") and ln != "event: ping")
    assert re.fullmatch(f"{BLOCK}*message_delta message_stop ", names), names


def test_full_queue_is_the_sdk_rate_limit_error(stack, paused):
    url = stack.start_api("api-anthropic-limited", LLMHOST_MAX_QUEUE_DEPTH="1")
    body = {"model": PAUSED, "max_tokens": 2, "messages": USER}
    answers: list[int] = []
    calls: list[threading.Thread] = []

    def call() -> None:
        answers.append(httpx.post(f"{url}/v1/messages", json=body, timeout=60).status_code)

    with stopped(paused):
        # One may be taken into the stopped worker's socket (its BRPOP was waiting); the next waits.
        while stack.redis.llen(queue_name(PAUSED)) < 1 and len(calls) < 3:
            calls.append(threading.Thread(target=call))
            calls[-1].start()
            end = time.monotonic() + 5
            while stack.redis.llen(queue_name(PAUSED)) < 1 and time.monotonic() < end:
                time.sleep(0.05)
        assert stack.redis.llen(queue_name(PAUSED)) >= 1, "nothing waited in the queue"
        with pytest.raises(anthropic.RateLimitError) as e:
            anthropic.Anthropic(base_url=url, api_key="x", max_retries=0).messages.create(**body)
        assert e.value.type == "rate_limit_error" and e.value.response.headers["retry-after"]
    for t in calls:
        t.join(60)
    assert answers == [200] * len(calls)  # the worker resumed and answered them


def test_server_error_is_api_error_and_after_the_200_an_error_event(stack, paused):
    """Job records that expire (LLMHOST_JOB_TTL) while the worker is stopped: a server error, 500
    before the answer started, an ``error`` event after it (the stream opened while the job waited)."""
    url = stack.start_api("api-anthropic-ttl", LLMHOST_JOB_TTL="6")
    sdk = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0, timeout=60)
    kw: dict[str, Any] = dict(model=PAUSED, max_tokens=2, messages=USER)
    with stopped(paused):
        with pytest.raises(anthropic.InternalServerError) as e:
            sdk.messages.create(**kw)
        assert e.value.status_code == 500 and e.value.type == "api_error"
        seen: list[str] = []
        with pytest.raises(anthropic.APIStatusError) as late:
            for ev in sdk.messages.create(stream=True, **kw):
                seen.append(ev.type)
    assert seen == ["message_start"] and late.value.status_code == 200 and late.value.type == "api_error"
