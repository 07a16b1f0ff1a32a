"""The added families in process, each on its tiny model (real special tokens and template): which
family the registry picks (by id, by config, by ``llmhost.json``), the prompt format (the built-in
one renders exactly what the folder's template does; exact strings of system/user/assistant/tool
turns), stop tokens, message rules, tool-call parsing and the stream filter, a forced call under
the grammar (after the thought, for the reasoning families)."""

from __future__ import annotations

import json
import shutil

import jsonschema
import pytest

from handlers.engine import Engine, run_to_completion
from handlers.reasoning import ChatStreamFilter
from handlers.registry import UnknownFamily, detect_family
from handlers.tools import hf_message, hf_tools
from tasks.contract.errors import JobError
from tasks.contract.payloads import Message, SamplingParams
from tests.conftest import TINY_CHATML, TINY_DEEPSEEK, TINY_GEMMA, TINY_PHI3, TINY_PHI4, TINY_QWEN3, TINY_QWEN25
from tests.test_tools import ASK, CALL, ROUND_TRIP, TIME, WEATHER, load

FAMILY = {TINY_QWEN25: "qwen2.5", TINY_QWEN3: "qwen3", TINY_GEMMA: "gemma", TINY_PHI3: "phi3", TINY_PHI4: "phi4",
          TINY_DEEPSEEK: "deepseek-r1"}
CONVERSATION = [Message(role="system", content="Be brief."), Message(role="user", content="Hi"),
                Message(role="assistant", content="Hello"), Message(role="user", content="Bye")]
# Forced calls are checked against a schema whose every value the grammar bounds (no free strings:
# a random model's bytes inside one may not even be UTF-8).
FORECAST = {"name": "get_weather", "parameters": {"type": "object", "properties": {
    "unit": {"enum": ["celsius", "fahrenheit"]}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["unit", "days"]}}
THOUGHT_IN_HISTORY = ASK + [Message(role="assistant", content="", tool_calls=[CALL]),
                            Message(role="tool", content='{"temp": 21}', tool_call_id="call_1"),
                            Message(role="assistant", content="<think>\nhot\n</think>\n\nIt is 21.")]


@pytest.mark.parametrize("model_id", list(FAMILY))
def test_registry_by_id_and_by_config(tiny_models, tmp_path, model_id):
    assert detect_family(model_id, tiny_models / model_id).name == FAMILY[model_id]
    opaque = tmp_path / "opaque" / "model"
    shutil.copytree(tiny_models / model_id, opaque)
    assert detect_family("opaque/model", opaque).name == FAMILY[model_id]


def test_llmhost_json_names_the_family(tiny_models, tmp_path):
    folder = tmp_path / "acme" / "custom"
    shutil.copytree(tiny_models / TINY_CHATML, folder)
    (folder / "llmhost.json").write_text('{"family": "qwen3"}')
    assert detect_family("acme/custom", folder).name == "qwen3"
    assert detect_family("acme/tiny-llama3", folder).name == "qwen3"  # over the id pattern too
    for body, says in (('{"family": "nope"}', "unknown model family 'nope'; known: embedding, deepseek-r1"),
                       ('{"family": 3}', "must name a family"), ("not json", "not a JSON object")):
        (folder / "llmhost.json").write_text(body)
        with pytest.raises(UnknownFamily, match=says) as e:
            detect_family("acme/custom", folder)
        assert "llmhost.json" in e.value.message and e.value.code == "unknown_family"


# --- prompt formats ----------------------------------------------------------------------------------

def folder_render(h, messages, tools=None, **kwargs) -> str:
    extra = {"tools": hf_tools(tools)} if tools else {}
    return h.tokenizer.apply_chat_template([hf_message(m) for m in messages], tokenize=False,
                                           add_generation_prompt=True, **extra, **kwargs)


SAME_AS_FOLDER = {  # what each folder's own template can render: the built-in format must equal it
    TINY_QWEN25: [(CONVERSATION, None, {}), (ASK, [WEATHER, TIME], {}), (ROUND_TRIP, [WEATHER, TIME], {}),
                  (ROUND_TRIP, None, {}), (ASK[1:], [TIME], {})],
    TINY_QWEN3: [(CONVERSATION, None, {}), (ASK, [WEATHER, TIME], {}), (ROUND_TRIP, [WEATHER, TIME], {}),
                 (CONVERSATION, None, {"enable_thinking": False}), (THOUGHT_IN_HISTORY, [WEATHER], {}),
                 (THOUGHT_IN_HISTORY + [Message(role="user", content="And now?")], [WEATHER], {})],
    TINY_GEMMA: [(CONVERSATION, None, {}), (CONVERSATION[1:], None, {})],
    TINY_PHI3: [(CONVERSATION, None, {}), ([Message(role="system", content=""), *CONVERSATION[1:]], None, {})],
    TINY_PHI4: [(CONVERSATION, None, {})],
    TINY_DEEPSEEK: [(CONVERSATION, None, {}), (ROUND_TRIP, None, {}), (THOUGHT_IN_HISTORY + [ASK[1]], None, {})],
}


@pytest.mark.parametrize("model_id", list(SAME_AS_FOLDER))
def test_builtin_format_is_the_folders(tiny_models, model_id):
    h = load(tiny_models, model_id)
    for messages, tools, kwargs in SAME_AS_FOLDER[model_id]:
        assert h.builtin_template(messages, tools, kwargs) == folder_render(h, messages, tools, **kwargs)


def test_qwen_formats(tiny_models):
    q25, q3 = load(tiny_models, TINY_QWEN25), load(tiny_models, TINY_QWEN3)
    assert q25.render_chat(ASK[1:]) == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                                        "assistant.<|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n"
                                        "<|im_start|>assistant\n")
    assert q3.render_chat(ASK[1:]) == "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n"
    history = q3.render_chat(CONVERSATION[:2] + [Message(role="assistant", content="<think>x</think>Hello"),
                                                 CONVERSATION[3]])
    assert "<|im_start|>assistant\nHello<|im_end|>" in history  # earlier thinking is not kept


def test_phi_formats(tiny_models):
    phi3, phi4 = load(tiny_models, TINY_PHI3), load(tiny_models, TINY_PHI4)
    assert phi3.render_chat(ASK) == "<|system|>\nBe brief.<|end|>\n<|user|>\nWeather in Paris?<|end|>\n<|assistant|>\n"
    with pytest.raises(JobError, match="no tool-calling format"):
        phi3.render_chat(ASK, [TIME])
    spec = json.dumps([TIME])
    assert phi4.render_chat(ASK, [TIME]) == (f"<|system|>Be brief.<|tool|>{spec}<|/tool|><|end|><|user|>Weather in "
                                             "Paris?<|end|><|assistant|>")  # the folder's template, tools on the system turn
    assert phi4.render_chat(ROUND_TRIP, [TIME]) == (
        f"<|system|>Be brief.<|tool|>{spec}<|/tool|><|end|><|user|>Weather in Paris?<|end|><|assistant|>"
        '<|tool_call|>{"name": "get_weather", "arguments": {"city": "Paris"}}<|/tool_call|>'
        '<|tool_call|>{"name": "get_time", "arguments": {}}<|/tool_call|><|end|>'
        '<|tool_response|>{"temp": 21}<|end|><|tool_response|>noon<|end|><|assistant|>')


def test_gemma_folds_system_and_tools_into_the_first_user_turn(tiny_models):
    h = load(tiny_models, TINY_GEMMA)
    assert h.render_chat(CONVERSATION) == ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
                                           "Hello<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")
    text = h.render_chat(ROUND_TRIP, [TIME])
    assert text.startswith("<bos><start_of_turn>user\nBe brief.\n\nYou have access to functions. If you decide to invoke")
    assert text.endswith(json.dumps([TIME], indent=2) + "\n\nWeather in Paris?<end_of_turn>\n<start_of_turn>model\n"
                         '{"name": "get_weather", "parameters": {"city": "Paris"}}\n{"name": "get_time", "parameters": {}}'
                         "<end_of_turn>\n<start_of_turn>user\n```tool_output\n{\"temp\": 21}\n```\n```tool_output\nnoon\n"
                         "```<end_of_turn>\n<start_of_turn>model\n")
    for bad in ([Message(role="user", content="a"), Message(role="user", content="b")],
                [Message(role="user", content="a"), Message(role="system", content="late")],
                [Message(role="user", content="a"), Message(role="assistant", content="b")]):
        with pytest.raises(JobError) as e:
            h.render_chat(bad)
        assert e.value.status_code == 400


def test_deepseek_format(tiny_models):
    h = load(tiny_models, TINY_DEEPSEEK)
    assert h.render_chat(CONVERSATION) == ("<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜>Hello<｜end▁of▁sentence｜>"
                                           "<｜User｜>Bye<｜Assistant｜><think>\n")
    assert h.render_chat(CONVERSATION, None, {"enable_thinking": False}).endswith("<｜Assistant｜><think>\n\n</think>\n\n")
    text = h.render_chat(ROUND_TRIP, [TIME])
    assert "## Tools\n" in text and json.dumps(TIME) in text
    assert text.endswith(
        "<｜User｜>Weather in Paris?<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>"
        'get_weather\n```json\n{"city": "Paris"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>'
        "get_time\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜><｜tool▁outputs▁begin｜>"
        '<｜tool▁output▁begin｜>{"temp": 21}<｜tool▁output▁end｜>\n<｜tool▁output▁begin｜>noon<｜tool▁output▁end｜>'
        "<｜tool▁outputs▁end｜>")  # after the results the assistant goes on without a new turn tag


STOPS = {TINY_QWEN25: ("<|im_end|>", "<|endoftext|>"), TINY_QWEN3: ("<|im_end|>", "<|endoftext|>"),
         TINY_GEMMA: ("<end_of_turn>", "<eos>"), TINY_PHI3: ("<|end|>", "<|endoftext|>"),
         TINY_PHI4: ("<|end|>", "<|endoftext|>"), TINY_DEEPSEEK: ("<｜end▁of▁sentence｜>",)}


@pytest.mark.parametrize("model_id", list(STOPS))
def test_stop_tokens(tiny_models, model_id):
    h = load(tiny_models, model_id)
    assert {h.tokenizer.convert_tokens_to_ids(t) for t in STOPS[model_id]} <= h.stop_ids


def test_family_markup_survives_decoding(tiny_models):
    """Phi-4-mini's call tokens are special (decoding would drop them): the family keeps them."""
    h = load(tiny_models, TINY_PHI4)
    ids = h.tokenizer.encode('<|tool_call|>{"a": 1}<|/tool_call|><|end|>', add_special_tokens=False)
    assert h.decode(ids) == '<|tool_call|>{"a": 1}<|/tool_call|>'
    assert h.tokenizer.decode(ids, skip_special_tokens=True) == '{"a": 1}'


# --- tool calls: parsers and the stream filter ---------------------------------------------------------------

DS_OPEN, DS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"


def ds_call(name: str, args: str, closed: bool = True) -> str:
    return (f"<｜tool▁call▁begin｜>function<｜tool▁sep｜>{name}\n```json\n{args}"
            + ("\n```<｜tool▁call▁end｜>" if closed else ""))


PARSE_CASES = {  # model → [(answer text, expected content, [(name, arguments)])]
    TINY_QWEN3: [('<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>', None, [("a", {"x": 1})]),
                 ("Plain.", "<same>", [])],
    TINY_GEMMA: [('{"name": "a", "parameters": {"x": 1}}', None, [("a", {"x": 1})]),
                 ('```json\n[{"name": "a", "parameters": {}}, {"name": "b", "parameters": {"y": "z"}}]\n```', None,
                  [("a", {}), ("b", {"y": "z"})]),
                 ('{"name": "a", "parameters": {}}\n{"name": "b", "parameters": {}}', None, [("a", {}), ("b", {})]),
                 ('{"name": "a", "parameters": {}} and prose', "<same>", []), ('{"no": "call"}', "<same>", []),
                 ("```python\nprint(1)\n```", "<same>", []), ("[1, 2]", "<same>", []), ("Plain.", "<same>", [])],
    TINY_PHI4: [('<|tool_call|>{"name": "a", "arguments": {"x": 1}}<|/tool_call|>', None, [("a", {"x": 1})]),
                ('Sure.<|tool_call|>[{"type": "function", "function": {"name": "a", "arguments": {}}}]<|/tool_call|>'
                 '<|tool_call|>{"name": "b", "parameters": {}}', "Sure.", [("a", {}), ("b", {})]),
                ('<|tool_call|>{"name": "a", "arguments": {', "<same>", []), ("Plain.", "<same>", [])],
    TINY_DEEPSEEK: [(DS_OPEN + ds_call("a", '{"x": 1}') + DS_END, None, [("a", {"x": 1})]),
                    ("Let me look.\n" + DS_OPEN + ds_call("a", "{}") + "\n" + ds_call("b", '{"q": "é"}') + DS_END,
                     "Let me look.", [("a", {}), ("b", {"q": "é"})]),
                    (DS_OPEN + ds_call("a", "{}", closed=False), None, [("a", {})]),  # forced: ends after its JSON
                    (DS_OPEN + ds_call("a", "[1]"), "<same>", []), ("Plain.", "<same>", [])],
}


@pytest.mark.parametrize("model_id", list(PARSE_CASES))
@pytest.mark.parametrize("step", [1, 4])
def test_parse_and_stream_filter(tiny_models, model_id, step):
    h = load(tiny_models, model_id)
    plan = h.tool_plan([WEATHER], "auto")
    for text, content, calls in PARSE_CASES[model_id]:
        got_content, got_calls = h.parse_tool_calls(text)
        assert got_content == (text if content == "<same>" else content), text
        assert [(c.name, json.loads(c.arguments)) for c in got_calls] == calls, text
        f, pieces = plan.filter(), [text[i:i + step] for i in range(0, len(text), step)]
        shown = "".join(f(p, i == len(pieces) - 1) for i, p in enumerate(pieces))
        assert shown == plan.finish(text)[0], text


# --- a forced call under the grammar ----------------------------------------------------------------------------

@pytest.mark.parametrize("model_id", [TINY_QWEN25, TINY_QWEN3, TINY_GEMMA, TINY_PHI4, TINY_DEEPSEEK])
@pytest.mark.parametrize("choice", [{"name": "get_weather"}, "required"])
def test_forced_call_validates(tiny_models, model_id, choice):
    h = load(tiny_models, model_id)
    plan = h.tool_plan([FORECAST, TIME], choice)
    ids = h.encode_chat(ASK, plan.tools, plan.prefill)
    reasoning = h.reasoning_plan(ids)
    engine = Engine(h, max_batch=1)
    seq = engine.add("t", ids, SamplingParams(temperature=0, max_tokens=160, constraint=plan.constraint), 160,
                     h.compile_constraint(plan.constraint, reasoning))
    f, shown = ChatStreamFilter(reasoning.splitter() if reasoning else None, plan.filter()), ""
    for out in run_to_completion(engine):
        shown += f(out.delta, out.finished)[1]
    thought, answer = reasoning.split(seq.text) if reasoning else (None, seq.text)
    content, calls = plan.finish(answer)
    assert seq.finish_reason == "stop" and content == shown == "" and len(calls) == 1, seq.text
    assert (thought is not None) == (model_id in (TINY_QWEN3, TINY_DEEPSEEK))
    if choice == "required":
        assert calls[0].name in ("get_weather", "get_time")
    else:
        assert calls[0].name == "get_weather"
        jsonschema.validate(json.loads(calls[0].arguments), FORECAST["parameters"])
