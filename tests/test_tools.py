"""Tool calling: each family's prompt format (exact strings), its parser, call ids, the stream filter,
forced calls under the grammar (in-process); then the OpenAI SDK and LangChain through the stack."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import openai
import pytest

from api.schemas.chat import ChatCompletionRequest, ChatMessage
from handlers.engine import Engine, run_to_completion
from handlers.registry import detect_family, handler_class
from handlers.tools import ToolCallFilter, as_alnum9
from tasks.contract.errors import JobError
from tasks.contract.payloads import LoadOptions, Message, SamplingParams, ToolCall
from tests.conftest import SMOL, TINY_CHATML, TINY_LLAMA3, TINY_MISTRAL
from tests.tiny_templates import QWEN25_TEMPLATE

try:
    import handlers.constraints  # noqa: F401

    HAVE_CONSTRAINTS = True
except ImportError:  # pragma: no cover
    HAVE_CONSTRAINTS = False
needs_constraints = pytest.mark.xfail(not HAVE_CONSTRAINTS, reason="handlers/constraints.py (xgrammar) not importable")

WEATHER = {"name": "get_weather", "description": "Weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TIME = {"name": "get_time", "parameters": {"type": "object", "properties": {}}}
# Bounded, so that even a random model finishes the call well within max_tokens under the grammar.
BOUNDED = {"name": "get_weather", "description": "Weather of a city",
           "parameters": {"type": "object", "properties": {
               "city": {"type": "string", "maxLength": 8},
               "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
               "required": ["city", "unit"]}}
CALL = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')
CALL2 = ToolCall(id="call_2", name="get_time", arguments="{}")
ASK = [Message(role="system", content="Be brief."), Message(role="user", content="Weather in Paris?")]
ROUND_TRIP = ASK + [Message(role="assistant", content="", tool_calls=[CALL, CALL2]),
                    Message(role="tool", content='{"temp": 21}', tool_call_id="call_1"),
                    Message(role="tool", content="noon", tool_call_id="call_2")]

_handlers: dict[str, object] = {}


def load(models: Path, model_id: str):
    if model_id not in _handlers:
        folder = models / model_id
        h = handler_class(detect_family(model_id, folder))(model_id, folder, LoadOptions(torch_threads=1))
        h.load()
        _handlers[model_id] = h
    return _handlers[model_id]


# --- prompt formats ------------------------------------------------------------------------------

CHATML_TOOLS = (
    "<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", "parameters": '
    '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}\n'
    '{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}\n'
    "</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n"
    "</tool_call><|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n")


def test_chatml_tool_prompt_and_round_trip_exact(tiny_models):
    h = load(tiny_models, TINY_CHATML)
    assert h.render_chat(ASK, [WEATHER, TIME]) == CHATML_TOOLS + "<|im_start|>assistant\n"
    assert h.render_chat(ROUND_TRIP, [WEATHER, TIME]) == CHATML_TOOLS + (
        "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n"
        "</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n{\"temp\": 21}\n</tool_response>\n<tool_response>\nnoon\n"
        "</tool_response><|im_end|>\n<|im_start|>assistant\n")
    # No tools: the plain ChatML format, unchanged.
    assert h.render_chat(ASK) == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n"


def test_tool_aware_tokenizer_template_gets_tools_and_hf_messages(tiny_models):
    """A template that takes tools is used (tools= and HF-shaped calls/results); it renders exactly
    what the family's built-in tool prompt renders, so that prompt is Qwen 2.5's real format."""
    folder = tiny_models / TINY_CHATML
    h = handler_class(detect_family(TINY_CHATML, folder))(TINY_CHATML, folder, LoadOptions(torch_threads=1))
    h.load()
    builtin = [h.render_chat(ASK, [WEATHER, TIME]), h.render_chat(ROUND_TRIP, [WEATHER, TIME]), h.render_chat(ROUND_TRIP)]
    h.tokenizer.chat_template = QWEN25_TEMPLATE
    assert [h.render_chat(ASK, [WEATHER, TIME]), h.render_chat(ROUND_TRIP, [WEATHER, TIME]),
            h.render_chat(ROUND_TRIP)] == builtin


LLAMA_PREAMBLE = (
    "Given the following functions, please respond with a JSON for a function call with its proper arguments that best "
    "answers the given prompt.\n\nRespond in the format {\"name\": function name, \"parameters\": dictionary of argument "
    "name and its value}.Do not use variables.\n\n")


def test_llama3_tool_prompt_and_round_trip_exact(tiny_models):
    h = load(tiny_models, TINY_LLAMA3)
    spec = json.dumps({"type": "function", "function": TIME}, indent=4)
    head = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\n" + LLAMA_PREAMBLE + spec + "\n\nWeather in Paris?<|eot_id|>")
    assert h.render_chat(ASK, [TIME]) == head + "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert h.render_chat(ROUND_TRIP, [TIME]) == head + (
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        '{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_time", "parameters": {}}<|eot_id|>'
        '<|start_header_id|>ipython<|end_header_id|>\n\n{"temp": 21}<|eot_id|>'
        "<|start_header_id|>ipython<|end_header_id|>\n\nnoon<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    for name in ("<|eot_id|>", "<|eom_id|>"):
        assert h.tokenizer.convert_tokens_to_ids(name) in h.stop_ids


def test_mistral_tool_prompt_and_round_trip_exact(tiny_models):
    h = load(tiny_models, TINY_MISTRAL)
    tools = ('[AVAILABLE_TOOLS] [{"type": "function", "function": {"name": "get_time", "parameters": '
             '{"type": "object", "properties": {}}}}][/AVAILABLE_TOOLS]')
    assert h.render_chat(ASK, [TIME]) == "<s>" + tools + "[INST] Be brief.\n\nWeather in Paris?[/INST]"
    id1, id2 = as_alnum9("call_1"), as_alnum9("call_2")
    assert re.fullmatch(r"[0-9a-f]{9}", id1) and id1 != id2 and as_alnum9("abcDEF123") == "abcDEF123"
    convo = ROUND_TRIP + [Message(role="assistant", content="It is 21 degrees."), Message(role="user", content="Thanks")]
    assert h.render_chat(convo, [TIME]) == (
        "<s>[INST] Be brief.\n\nWeather in Paris?[/INST]"
        f'[TOOL_CALLS] [{{"name": "get_weather", "arguments": {{"city": "Paris"}}, "id": "{id1}"}}, '
        f'{{"name": "get_time", "arguments": {{}}, "id": "{id2}"}}]</s>'
        f'[TOOL_RESULTS] {{"content": {{"temp": 21}}, "call_id": "{id1}"}}[/TOOL_RESULTS]'
        f'[TOOL_RESULTS] {{"content": noon, "call_id": "{id2}"}}[/TOOL_RESULTS]'
        "It is 21 degrees.</s>" + tools + "[INST] Thanks[/INST]")
    # Calls and results stand outside the user/assistant alternation; a result may end the conversation.
    h.validate_messages(ROUND_TRIP)
    with pytest.raises(JobError):
        h.validate_messages(ASK + [Message(role="assistant", content="x")])


def test_smollm2_template_without_tools_uses_the_chatml_tool_prompt(tiny_models):
    h = load(tiny_models, SMOL)
    assert "tools" not in h.tokenizer.chat_template
    assert h.render_chat(ASK, [WEATHER, TIME]) == CHATML_TOOLS + "<|im_start|>assistant\n"
    assert h.render_chat(ASK).startswith("<|im_start|>system\nBe brief.<|im_end|>")  # its own template otherwise


# --- parsers -------------------------------------------------------------------------------------

OPENAI_ID = re.compile(r"call_[0-9a-f]{24}")
MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")

# family model → [(model output, expected content, expected [(name, arguments dict)])]
PARSE_CASES = {
    TINY_CHATML: [
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
         None, [("get_weather", {"city": "Paris"})]),
        ('<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n<tool_call>\n{"name": "b", "arguments": {}}\n</tool_call>',
         None, [("a", {"x": 1}), ("b", {})]),
        ('Let me check.\n<tool_call>\n{"name": "a", "arguments": {"q": "é;}"}}\n</tool_call>', "Let me check.", [("a", {"q": "é;}"})]),
        ('<tool_call>\n{"name": "a", "arguments": {"x": 1}}', None, [("a", {"x": 1})]),  # forced: no closing tag
        ('<tool_call>\n{"name": "a", "arguments": {"x": </tool_call>', "<same>", []),  # malformed → content
        ('<tool_call>\n{"arguments": {}}\n</tool_call>', "<same>", []),  # no name → content
        ("Just text.", "<same>", []),
    ],
    TINY_LLAMA3: [
        ('{"name": "get_weather", "parameters": {"city": "Paris"}}', None, [("get_weather", {"city": "Paris"})]),
        ('<|python_tag|>{"name": "a", "arguments": {"x": 1}}', None, [("a", {"x": 1})]),
        ('{"name": "a", "parameters": {"s": "x;y"}}; {"name": "b", "parameters": {}}', None, [("a", {"s": "x;y"}), ("b", {})]),
        ('{"name": "a", "parameters": {"x": 1', "<same>", []),
        ('{"name": "a", "parameters": {}} and some prose', "<same>", []),
        ('{"not": "a call"}', "<same>", []),
        ("Plain answer.", "<same>", []),
    ],
    TINY_MISTRAL: [
        ('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]', None, [("get_weather", {"city": "Paris"})]),
        (' [{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]', None, [("a", {"x": 1}), ("b", {})]),
        ('Sure.[TOOL_CALLS] [{"name": "a", "arguments": {}}]', "Sure.", [("a", {})]),
        ('[TOOL_CALLS] [{"name": "a", "arguments": {', "<same>", []),
        ("[1, 2, 3]", "<same>", []),
        ("No tools needed.", "<same>", []),
    ],
}


@pytest.mark.parametrize("model_id", list(PARSE_CASES))
def test_parsers_on_hand_written_outputs(tiny_models, model_id):
    h = load(tiny_models, model_id)
    for text, content, calls in PARSE_CASES[model_id]:
        got_content, got_calls = h.parse_tool_calls(text)
        assert got_content == (text if content == "<same>" else content), text
        assert [(c.name, json.loads(c.arguments)) for c in got_calls] == calls, text
        ids = MISTRAL_ID if model_id == TINY_MISTRAL else OPENAI_ID
        assert all(ids.fullmatch(c.id) for c in got_calls)
        assert len({c.id for c in got_calls}) == len(got_calls)


def test_mistral_keeps_a_valid_id_from_the_model(tiny_models):
    h = load(tiny_models, TINY_MISTRAL)
    _, calls = h.parse_tool_calls('[TOOL_CALLS] [{"name": "a", "arguments": {}, "id": "Ab3dE6gH9"}]')
    assert calls[0].id == "Ab3dE6gH9"


def test_plan_none_and_parallel(tiny_models):
    h = load(tiny_models, TINY_CHATML)
    assert h.tool_plan([WEATHER], "none") is None and h.tool_plan(None, "auto") is None
    two = '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "b", "arguments": {}}\n</tool_call>'
    assert [c.name for c in h.tool_plan([WEATHER], "auto").finish(two)[1]] == ["a", "b"]
    assert [c.name for c in h.tool_plan([WEATHER], "auto", parallel=False).finish(two)[1]] == ["a"]
    assert h.tool_plan([WEATHER], "auto").finish("hello") == ("hello", [])
    forced = h.tool_plan([WEATHER, TIME], {"name": "get_time"})
    assert forced.prefill == "<tool_call>\n" and forced.constraint["schema"]["properties"]["name"] == {"const": "get_time"}
    assert len(h.tool_plan([WEATHER, TIME], "required").constraint["schema"]["anyOf"]) == 2
    assert load(tiny_models, TINY_LLAMA3).tool_plan([TIME], "required").constraint["schema"]["required"] == ["name", "parameters"]
    assert load(tiny_models, TINY_MISTRAL).tool_plan([TIME], "required").constraint["schema"]["type"] == "array"


# --- the stream filter -----------------------------------------------------------------------------

@pytest.mark.parametrize("model_id", list(PARSE_CASES))
@pytest.mark.parametrize("step", [1, 3, 7])
def test_stream_filter_content_equals_non_streamed(tiny_models, model_id, step):
    """Fed in pieces, the filter shows exactly the content the final parse keeps, never markup."""
    h = load(tiny_models, model_id)
    plan = h.tool_plan([WEATHER], "auto")
    extra = ["Hello <tool", "Text with a { brace", "  leading space", "a\n\nb  ", "<tool_call"]
    for text in [t for t, _, _ in PARSE_CASES[model_id]] + extra:
        f = plan.filter()
        pieces = [text[i:i + step] for i in range(0, len(text), step)] or [""]
        shown = "".join(f(p, i == len(pieces) - 1) for i, p in enumerate(pieces))
        content, calls = plan.finish(text)
        assert shown == content, (text, shown)
        if calls:
            assert "{" not in shown and "<tool_call>" not in shown


def test_stream_filter_forced_call_shows_nothing(tiny_models):
    plan = load(tiny_models, TINY_CHATML).tool_plan([WEATHER], {"name": "get_weather"})
    f = plan.filter()
    assert f('{"name": "get_weather", ', False) == "" and f('"arguments": {"city": "P"}}', True) == ""
    f = ToolCallFilter(plan.parse, plan.markers, prefill=plan.prefill)  # a failed forced call: all of it is content
    assert f("not json", False) + f("", True) == "not json"


# --- forced calls under the grammar, in-process ------------------------------------------------------

def run(h, messages, tools, choice, max_tokens=80):
    plan = h.tool_plan(tools, choice)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, constraint=plan.constraint)
    engine = Engine(h, max_batch=1)
    seq = engine.add("t", h.encode_chat(messages, plan.tools, plan.prefill), params, max_tokens,
                     h.compile_constraint(plan.constraint))
    f, shown = plan.filter(), ""
    for out in run_to_completion(engine):
        shown += f(out.delta, out.finished)
    content, calls = plan.finish(seq.text)
    return content, calls, shown


@needs_constraints
@pytest.mark.parametrize("model_id", [TINY_CHATML, TINY_LLAMA3, TINY_MISTRAL])
def test_forced_named_call_validates_against_its_schema(tiny_models, model_id):
    h = load(tiny_models, model_id)
    content, calls, shown = run(h, ASK, [TIME, BOUNDED], {"name": "get_weather"})
    assert content == "" and shown == "" and len(calls) == 1 and calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments), BOUNDED["parameters"])
    content, calls, _ = run(h, ASK, [BOUNDED, TIME], "required")
    assert [c.name for c in calls] in (["get_weather"], ["get_time"])


# --- the front's validation ----------------------------------------------------------------------------

def chat_request(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "a/b", "messages": [{"role": "user", "content": "x"}], **fields})


FN = {"type": "function", "function": WEATHER}


@pytest.mark.parametrize("fields,param", [
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}, "tools[0].function.parameters"),
    ({"tools": [FN, FN]}, "tools[1].function.name"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "tool_choice"),
    ({"tools": [FN], "tool_choice": {"type": "function", "function": {"name": "other"}}}, "tool_choice"),
    ({"tools": [FN], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [FN], "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
])
def test_front_refuses_bad_tools_naming_the_param(fields, param):
    with pytest.raises(JobError) as e:
        chat_request(**fields)  # checked when parsed
    assert e.value.status_code == 400 and e.value.param == param


def test_front_normalises_tools_and_messages():
    job = chat_request(tools=[FN], tool_choice={"type": "function", "function": {"name": "get_weather"}},
                       parallel_tool_calls=False).to_job("job-1", 0.0, None)
    assert job.tools == [WEATHER] and job.tool_choice == {"name": "get_weather"} and not job.parallel_tool_calls
    assert chat_request(tools=[FN]).to_job("job-2", 0.0, None).tool_choice == "auto"
    assert chat_request().to_job("job-3", 0.0, None).tool_choice == "none"
    m = ChatMessage.model_validate({"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]})
    assert m.flatten(1) == Message(role="assistant", content="", tool_calls=[CALL])
    t = ChatMessage.model_validate({"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "21"}]})
    assert t.flatten(2) == Message(role="tool", content="21", tool_call_id="call_1")
    for bad, param in (({"role": "tool", "content": "x"}, "messages[3]"),
                       ({"role": "assistant", "tool_calls": [{"id": "c", "function": {}}]}, "messages[3].tool_calls[0]"),
                       ({"role": "user", "content": "x", "tool_calls": [{}]}, "messages[3].tool_calls")):
        with pytest.raises(JobError) as e:
            ChatMessage.model_validate(bad).flatten(3)
        assert e.value.param == param


# --- end to end: the openai SDK -------------------------------------------------------------------------

def oa_tool(spec: dict) -> dict:
    return {"type": "function", "function": spec}


def named(name: str) -> dict:
    return {"type": "function", "function": {"name": name}}


USER = [{"role": "user", "content": "What is the weather in Paris?"}]


@needs_constraints
@pytest.mark.parametrize("model", [TINY_CHATML, TINY_MISTRAL])
def test_e2e_named_tool_choice_returns_a_valid_call(client, model):
    r = client.chat.completions.create(model=model, messages=USER, tools=[oa_tool(BOUNDED)],  # tiny models: 512 tokens
                                       tool_choice=named("get_weather"), temperature=0, max_tokens=60)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert (MISTRAL_ID if model == TINY_MISTRAL else OPENAI_ID).fullmatch(call.id)
    jsonschema.validate(json.loads(call.function.arguments), BOUNDED["parameters"])


def test_e2e_tool_choice_none_is_plain_content(client):
    for _ in range(2):
        r = client.chat.completions.create(model=TINY_CHATML, messages=USER, tools=[oa_tool(WEATHER)],
                                           tool_choice="none", temperature=1.0, max_tokens=20)
        assert r.choices[0].finish_reason in ("stop", "length") and not r.choices[0].message.tool_calls
        assert isinstance(r.choices[0].message.content, str)


def assemble(chunks) -> tuple[str, list[dict], list[str]]:
    content, calls, finishes = "", {}, []
    for c in chunks:
        for ch in c.choices:
            content += ch.delta.content or ""
            for d in ch.delta.tool_calls or ():
                slot = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                slot["id"] = d.id or slot["id"]
                if d.function:
                    slot["name"] += d.function.name or ""
                    slot["arguments"] += d.function.arguments or ""
            if ch.finish_reason:
                finishes.append(ch.finish_reason)
    return content, [calls[i] for i in sorted(calls)], finishes


@needs_constraints
@pytest.mark.parametrize("model,choice", [(TINY_CHATML, named("get_weather")), (TINY_MISTRAL, "required"),
                                          (TINY_CHATML, "auto")])
def test_e2e_greedy_stream_equals_non_stream(client, model, choice):
    kw = dict(model=model, messages=USER, tools=[oa_tool(BOUNDED)], tool_choice=choice, temperature=0, max_tokens=60)
    whole = client.chat.completions.create(**kw).choices[0]
    content, calls, finishes = assemble(client.chat.completions.create(stream=True, **kw))
    assert finishes == [whole.finish_reason]
    assert content == (whole.message.content or "")
    assert [(c["name"], c["arguments"]) for c in calls] == [
        (t.function.name, t.function.arguments) for t in whole.message.tool_calls or ()]
    # Ids are drawn per response (as OpenAI's are): same format in both, and each streamed call has one.
    ids = MISTRAL_ID if model == TINY_MISTRAL else OPENAI_ID
    assert all(ids.fullmatch(c["id"]) for c in calls) and all(ids.fullmatch(t.id) for t in whole.message.tool_calls or ())
    if choice != "auto":
        assert whole.finish_reason == "tool_calls" and len(calls) == 1


def test_e2e_stream_chunks_have_the_openai_shape(http):
    body = {"model": TINY_CHATML, "messages": USER, "tools": [oa_tool(BOUNDED)], "tool_choice": named("get_weather"),
            "temperature": 0, "max_tokens": 60, "stream": True}
    lines = [ln[6:] for ln in http.post("/v1/chat/completions", json=body).text.splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    deltas = [json.loads(ln)["choices"][0]["delta"] for ln in lines[:-1]]
    tool_deltas = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    if HAVE_CONSTRAINTS:
        first, rest = tool_deltas[0], tool_deltas[1:]
        assert first["index"] == 0 and first["type"] == "function" and first["function"] == {"name": "get_weather", "arguments": ""}
        assert rest and all(set(d) == {"index", "function"} and set(d["function"]) == {"arguments"} for d in rest)
    assert not any(d.get("content") for d in deltas)


@pytest.mark.parametrize("model", [TINY_CHATML, TINY_MISTRAL, SMOL])
def test_e2e_round_trip_with_tool_results(client, model):
    messages = USER + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": '{"temp": 21}'}]
    r = client.chat.completions.create(model=model, messages=messages, tools=[oa_tool(WEATHER)], temperature=0,
                                       max_tokens=8)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    r = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=4)  # history only
    assert r.choices[0].message.role == "assistant"


def test_e2e_bad_tools_are_400s_naming_the_param(client):
    cases = [(dict(tools=[{"type": "function", "function": {"name": "no spaces"}}]), "tools[0].function.name"),
             (dict(tool_choice="required"), "tool_choice"),
             (dict(tools=[oa_tool(WEATHER)], tool_choice=named("nope")), "tool_choice"),
             (dict(messages=[{"role": "tool", "content": "x"}]), "messages[0]")]
    for kw, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(**{"model": TINY_CHATML, "messages": USER, "max_tokens": 2, **kw})
        assert e.value.body["param"] == param


# --- end to end: LangChain ---------------------------------------------------------------------------------

def _chat_openai(stack):
    lc = pytest.importorskip("langchain_openai")
    return lc.ChatOpenAI(base_url=f"{stack.base_url}/v1", api_key="x", model=TINY_CHATML, temperature=0,
                         max_tokens=60, max_retries=0)


@needs_constraints
def test_langchain_bind_tools_named_choice(stack):
    llm = _chat_openai(stack).bind_tools([oa_tool(BOUNDED)], tool_choice="get_weather")
    msg = llm.invoke("What is the weather in Paris?")
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "get_weather"
    assert msg.tool_calls[0]["id"].startswith("call_")
    jsonschema.validate(msg.tool_calls[0]["args"], BOUNDED["parameters"])


@needs_constraints
def test_langchain_structured_output_json_schema(stack):
    from typing import Literal

    from pydantic import BaseModel, Field

    class Weather(BaseModel):
        city: str = Field(max_length=8)
        unit: Literal["celsius", "fahrenheit"]

    out = _chat_openai(stack).with_structured_output(Weather, method="json_schema").invoke("Weather in Paris?")
    assert isinstance(out, Weather)
