"""The added families through the real stack, a worker each (started here): one chat request per
family, a forced tool call (streamed == not) where the family has a tool format, the family on
``/v1/models/{id}``; a reasoning model's thought as ``message.reasoning_content`` and streamed
``delta.reasoning_content`` (the scripted tiny Qwen 3 and DeepSeek-R1 write "The user says goodbye",
then "Goodbye!"), ``usage`` reasoning tokens, ``enable_thinking``/``reasoning_effort``, JSON after the
thought; ``llmhost.json`` naming a family, and an unknown one failing the worker's load."""

from __future__ import annotations

import json
import shutil

import jsonschema
import pytest

from tasks.contract.errors import EXIT_LOAD_FAILED
from tests.conftest import (
    NEW_FAMILIES,
    TINY_CHATML,
    TINY_DEEPSEEK,
    TINY_GEMMA,
    TINY_PHI3,
    TINY_PHI4,
    TINY_QWEN3,
    TINY_QWEN25,
    _wait,
)
from tests.test_family_formats import FAMILY, FORECAST
from tests.test_reasoning import OK
from tests.test_tools import assemble, named, oa_tool

HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Bye"}]
THOUGHT, ANSWER = "The user says goodbye", "Goodbye!"


@pytest.fixture(scope="module")
def families(stack):
    procs = [stack.start_worker(m) for m in NEW_FAMILIES.values()]
    _wait(lambda: all(stack.ready_workers().get(m) for m in NEW_FAMILIES.values()), 300, "family workers")
    yield stack
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(30)


def reasoning_of(obj) -> str | None:
    return (obj.model_extra or {}).get("reasoning_content")


def streamed(client, **kw) -> tuple[str, str, list[str], dict]:
    """(reasoning, content, finish reasons, usage) assembled from a stream."""
    thought, content, finishes, usage = "", "", [], {}
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        for ch in chunk.choices:
            assert not (reasoning_of(ch.delta) and ch.delta.content), "a chunk mixed thought and answer"
            thought += reasoning_of(ch.delta) or ""
            content += ch.delta.content or ""
            finishes += [ch.finish_reason] if ch.finish_reason else []
        usage = chunk.usage.model_dump() if chunk.usage else usage
    return thought, content, finishes, usage


@pytest.mark.parametrize("model", list(FAMILY))
def test_each_family_answers_and_names_itself(families, client, http, model):
    r = client.chat.completions.create(model=model, messages=HELLO, temperature=0, max_tokens=8)
    assert r.choices[0].finish_reason in ("stop", "length") and isinstance(r.choices[0].message.content, str)
    card = http.get(f"/v1/models/{model}").json()
    assert card["family"] == FAMILY[model] and card["served"]


@pytest.mark.parametrize("model", [TINY_QWEN25, TINY_QWEN3, TINY_GEMMA, TINY_PHI4, TINY_DEEPSEEK])
def test_forced_call_per_family_stream_equals_non_stream(families, client, model):
    kw = dict(model=model, messages=HELLO, tools=[oa_tool(FORECAST)], tool_choice=named("get_weather"),
              temperature=0, max_tokens=120)
    whole = client.chat.completions.create(**kw).choices[0]
    assert whole.finish_reason == "tool_calls" and whole.message.content is None
    [call] = whole.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), FORECAST["parameters"])
    content, calls, finishes = assemble(client.chat.completions.create(stream=True, **kw))
    assert (content, finishes) == ("", ["tool_calls"])
    assert [(c["name"], c["arguments"]) for c in calls] == [("get_weather", call.function.arguments)]
    if model in (TINY_QWEN3, TINY_DEEPSEEK):  # the call came after the thought
        assert reasoning_of(whole.message) == THOUGHT


def test_a_family_without_tool_format_refuses_tools(families, client):
    import openai

    with pytest.raises(openai.BadRequestError, match="no tool-calling format"):
        client.chat.completions.create(model=TINY_PHI3, messages=HELLO, tools=[oa_tool(FORECAST)], max_tokens=4)


@pytest.mark.parametrize("model", [TINY_DEEPSEEK, TINY_QWEN3])
def test_thought_is_reasoning_content_streamed_and_not(families, client, model):
    kw = dict(model=model, messages=HELLO, temperature=0, max_tokens=40)
    r = client.chat.completions.create(**kw)
    message = r.choices[0].message
    assert (reasoning_of(message), message.content, r.choices[0].finish_reason) == (THOUGHT, ANSWER, "stop")
    details = r.usage.completion_tokens_details
    assert details is not None and details.reasoning_tokens == r.usage.completion_tokens - 3  # "Good", "bye", "!"
    thought, content, finishes, usage = streamed(client, **kw)
    assert (thought, content, finishes) == (THOUGHT, ANSWER, ["stop"])
    assert usage["completion_tokens_details"]["reasoning_tokens"] == details.reasoning_tokens


def test_max_tokens_counts_the_thought(families, client):
    r = client.chat.completions.create(model=TINY_DEEPSEEK, messages=HELLO, temperature=0, max_tokens=3)
    assert (reasoning_of(r.choices[0].message), r.choices[0].message.content) == ("The user says", "")
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == r.usage.completion_tokens_details.reasoning_tokens == 3


@pytest.mark.parametrize("extra", [{"chat_template_kwargs": {"enable_thinking": False}}, {"reasoning_effort": "none"}])
def test_thinking_can_be_turned_off(families, client, extra):
    r = client.chat.completions.create(model=TINY_QWEN3, messages=HELLO, temperature=0, max_tokens=40, extra_body=extra)
    assert (reasoning_of(r.choices[0].message), r.choices[0].message.content) == (None, ANSWER)
    assert r.usage.completion_tokens_details is None or not r.usage.completion_tokens_details.reasoning_tokens


def test_template_kwargs_the_server_sets_are_refused(families, client):
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=TINY_QWEN3, messages=HELLO, max_tokens=4,
                                       extra_body={"chat_template_kwargs": {"add_generation_prompt": False}})
    assert e.value.body["param"] == "chat_template_kwargs"


@pytest.mark.parametrize("model", [TINY_DEEPSEEK, TINY_QWEN3])
def test_json_schema_after_a_free_thought(families, client, model):
    kw = dict(model=model, messages=HELLO, temperature=0, max_tokens=60,
              response_format={"type": "json_schema", "json_schema": {"name": "mood", "schema": OK}})
    r = client.chat.completions.create(**kw)
    assert reasoning_of(r.choices[0].message) == THOUGHT and r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), OK)
    thought, content, _, _ = streamed(client, **kw)
    assert (thought, content) == (THOUGHT, r.choices[0].message.content)


def test_llmhost_json_overrides_detection(families, client, http):
    """The scripted Qwen 3 served as plain ChatML: its thought is then just text in the answer."""
    folder = families.models_dir / "acme" / "qwen3-as-chatml"
    shutil.copytree(families.models_dir / TINY_QWEN3, folder)
    (folder / "llmhost.json").write_text('{"family": "chatml"}')
    proc = families.start_worker("acme/qwen3-as-chatml")
    try:
        _wait(lambda: families.ready_workers().get("acme/qwen3-as-chatml"), 120, "the named family's worker")
        assert http.get("/v1/models/acme/qwen3-as-chatml").json()["family"] == "chatml"
        r = client.chat.completions.create(model="acme/qwen3-as-chatml", messages=HELLO, temperature=0, max_tokens=40)
        assert reasoning_of(r.choices[0].message) is None
        assert r.choices[0].message.content == f"<think>{THOUGHT}</think>{ANSWER}"
    finally:
        proc.terminate()
        proc.wait(30)


def test_unknown_family_fails_the_load_listing_the_known(families):
    folder = families.models_dir / "acme" / "bad-family"
    shutil.copytree(families.models_dir / TINY_CHATML, folder)
    (folder / "llmhost.json").write_text('{"family": "nope"}')
    proc = families.start_worker("acme/bad-family")
    assert proc.wait(120) == EXIT_LOAD_FAILED
    log = next(families.root.glob("worker-acme--bad-family-*.log")).read_text()
    assert "unknown model family 'nope'; known: embedding, deepseek-r1, llama3" in log


# --- the other wire formats: Anthropic thinking blocks, Responses reasoning items ---------------------------

def test_anthropic_thinking_block_streamed_and_not(families):
    import anthropic

    claude = anthropic.Anthropic(base_url=families.base_url, api_key="x", max_retries=0, timeout=120)
    # Greedy through the body, as tests/test_anthropic.py asks for it.
    kw = dict(model=TINY_DEEPSEEK, max_tokens=40, extra_body={"temperature": 0}, messages=[{"role": "user", "content": "Bye"}])
    m = claude.messages.create(**kw)
    assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in m.content] == [
        ("thinking", THOUGHT), ("text", ANSWER)]
    with claude.messages.stream(**kw) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert [b.model_dump() for b in final.content] == [b.model_dump() for b in m.content]
    assert "thinking" in kinds and kinds.count("content_block_stop") == 2
    off = claude.messages.create(**{**kw, "model": TINY_QWEN3}, thinking={"type": "disabled"})
    assert [(b.type, b.text) for b in off.content] == [("text", ANSWER)]


def test_responses_reasoning_item_streamed_and_not(families, client):
    kw = dict(model=TINY_DEEPSEEK, input="Bye", max_output_tokens=40, temperature=0)
    r = client.responses.create(**kw)
    assert [item.type for item in r.output] == ["reasoning", "message"]
    assert r.output[0].content[0].text == THOUGHT and r.output_text == ANSWER
    assert r.usage.output_tokens_details.reasoning_tokens == r.usage.output_tokens - 3
    events = list(client.responses.create(stream=True, **kw))
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == THOUGHT
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == ANSWER
    assert [e.sequence_number for e in events] == list(range(len(events)))
    def no_ids(output):
        return [{k: v for k, v in item.items() if k != "id"} for item in output]

    assert no_ids(events[-1].response.model_dump()["output"]) == no_ids(r.model_dump()["output"])
    added = [(e.output_index, e.item.type) for e in events if e.type == "response.output_item.added"]
    assert added == [(0, "reasoning"), (1, "message")]
    follow_up = client.responses.create(**{**kw, "input": "Again?"}, previous_response_id=r.id)
    assert follow_up.output_text == ANSWER  # the earlier thought is kept as an item, not shown to the model
    off = client.responses.create(**{**kw, "model": TINY_QWEN3}, reasoning={"effort": "none"})
    assert [item.type for item in off.output] == ["message"] and off.output_text == ANSWER
