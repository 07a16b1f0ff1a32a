"""Reasoning kept apart from the answer, in process: the split and its stream splitter on hand-written
texts, the grammar that waits for the thought's end on token sequences, then the engine on the
scripted tiny Qwen 3 and DeepSeek-R1 models (greedy decoding writes "The user says goodbye" as the
thought and "Goodbye!" as the answer: tests/tiny_specs.py), and the front's translation."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest

from api.metrics import Metrics
from api.responses import chat_completion
from api.streaming import StreamShape
from handlers.engine import Engine, run_to_completion
from handlers.reasoning import ChatStreamFilter, ReasoningPlan, ThinkTags, plan_reasoning, thinking_off
from tasks.contract.payloads import Event, GenerateResult, Message, Output, SamplingParams
from tests.conftest import TINY_DEEPSEEK, TINY_QWEN3
from tests.test_job_stream import Client, frames, watched
from tests.test_tools import load

TAGS = ThinkTags()
INSIDE, MAY_OPEN = ReasoningPlan(TAGS, inside=True), ReasoningPlan(TAGS, inside=False)
ASK = [Message(role="user", content="Bye")]
OK = {"type": "object", "properties": {"ok": {"type": "boolean"}, "mood": {"enum": ["calm", "glad"]}},
      "required": ["ok", "mood"]}

SPLITS = [  # (plan, text, reasoning, answer)
    (INSIDE, "The user says goodbye</think>Goodbye!", "The user says goodbye", "Goodbye!"),
    (INSIDE, "\nplan\n\n</think>\n\nanswer  ", "plan", "answer  "),
    (INSIDE, "still thinking when the tokens ran out ", "still thinking when the tokens ran out", ""),
    (INSIDE, "</think>", "", ""),
    (INSIDE, "a < b </thin k> c</think>d</think>e", "a < b </thin k> c", "d</think>e"),
    (MAY_OPEN, "<think>\nhm\n</think>\n\nyes", "hm", "yes"),
    (MAY_OPEN, "  <think>x</think>y", "x", "y"),
    (MAY_OPEN, "no thought here", None, "no thought here"),
    (MAY_OPEN, "  <thin", None, "  <thin"),
    (MAY_OPEN, "", None, ""),
    (MAY_OPEN, "text then <think>x</think>", None, "text then <think>x</think>"),
]


@pytest.mark.parametrize("plan,text,reasoning,answer", SPLITS)
def test_split(plan, text, reasoning, answer):
    assert plan.split(text) == (reasoning, answer)


@pytest.mark.parametrize("step", [1, 2, 3, 5, 8])
def test_stream_splitter_equals_the_split_and_never_shows_half_a_tag(step):
    for plan, text, reasoning, answer in SPLITS:
        splitter, thought, shown = plan.splitter(), "", ""
        pieces = [text[i:i + step] for i in range(0, len(text), step)] or [""]
        for i, piece in enumerate(pieces):
            t, a = splitter(piece, i == len(pieces) - 1)
            thought, shown = thought + t, shown + a
            # Each side only ever grows into the final one: no half tag, no text taken back.
            assert (reasoning or "").startswith(thought) and answer.startswith(shown), (text, thought, shown)
        assert (thought, shown) == (reasoning or "", answer), (text, step)


def test_stream_filter_hands_the_answer_to_the_tool_filter(tiny_models):
    h = load(tiny_models, TINY_QWEN3)
    plan = h.tool_plan([{"name": "f", "parameters": {"type": "object", "properties": {}}}], "auto")
    text = 'The user<tool_call> is no call here</think>Sure.\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    f, thought, shown = ChatStreamFilter(INSIDE.splitter(), plan.filter()), "", ""
    for i in range(0, len(text), 4):
        t, a = f(text[i:i + 4], i + 4 >= len(text))
        thought, shown = thought + t, shown + a
    reasoning, answer = INSIDE.split(text)
    content, calls = plan.finish(answer)
    assert thought == reasoning == "The user<tool_call> is no call here"
    assert shown == content == "Sure." and [c.name for c in calls] == ["f"]


def test_prompt_decides_where_the_output_starts():
    assert plan_reasoning(TAGS, "<｜Assistant｜><think>\n").inside
    assert not plan_reasoning(TAGS, "<|im_start|>assistant\n").inside
    assert not plan_reasoning(TAGS, "assistant\n<think>\n\n</think>\n\n").inside
    assert thinking_off({"enable_thinking": False}) and thinking_off({"reasoning_effort": "none"})
    assert not thinking_off({"reasoning_effort": "none", "enable_thinking": True}) and not thinking_off({})


# --- the grammar after the thought, on token sequences ------------------------------------------------

def allowed(matcher, vocab: int) -> set[int]:
    import torch

    row = torch.zeros(vocab)
    matcher.mask_logits(row)
    return set(torch.isfinite(row).nonzero().flatten().tolist())


def test_reasoning_matcher_lets_the_thought_run_free_then_enforces(tiny_models):
    h = load(tiny_models, TINY_DEEPSEEK)
    vocab, tok = int(h.model.config.vocab_size), h.tokenizer
    grammar = h.compile_constraint({"type": "json_schema", "schema": OK}, INSIDE)
    m = grammar.matcher()
    thought = tok.encode("{{ not json, and <think> nested", add_special_tokens=False)
    for t in thought:
        free = allowed(m, vocab)
        assert t in free and not free & h.stop_ids and len(free) >= vocab - len(h.stop_ids) - 5
        m.accept(t)
    m.accept(tok.convert_tokens_to_ids("</think>"))
    first = allowed(m, vocab)  # from here on, the JSON: it starts with its brace, at once
    assert m.phase == "grammar" and first and all(tok.decode([i]).startswith("{") for i in first)
    for t in tok.encode('{"ok": true, "mood": "calm"}', add_special_tokens=False):
        assert t in allowed(m, vocab)
        m.accept(t)
    assert m.done and allowed(m, vocab) <= h.stop_ids
    with pytest.raises(ValueError):
        m.accept(tok.encode("x", add_special_tokens=False)[0])


def test_reasoning_matcher_may_open_and_forces_a_call_opener(tiny_models):
    h = load(tiny_models, TINY_QWEN3)
    vocab, tok = int(h.model.config.vocab_size), h.tokenizer
    think, end = tok.convert_tokens_to_ids("<think>"), tok.convert_tokens_to_ids("</think>")
    plan = h.tool_plan([{"name": "f", "parameters": {"type": "object", "properties": {}}}], "required")
    assert plan.prefill == "" and plan.constraint["type"] == "tool_call"
    opener = tok.encode("<tool_call>\n", add_special_tokens=False)
    m = h.compile_constraint(plan.constraint, MAY_OPEN).matcher()
    assert allowed(m, vocab) == {think, opener[0]}  # a thought, or the call at once
    m.accept(think)
    for t in tok.encode("hm", add_special_tokens=False) + [end]:
        m.accept(t)
    for t in opener:  # the opener is forced, token by token
        assert allowed(m, vocab) == {t}
        m.accept(t)
    for t in tok.encode('{"name": "f", "arguments": {}}', add_special_tokens=False):
        m.accept(t)
    assert m.done
    direct = h.compile_constraint(plan.constraint, MAY_OPEN).matcher()
    direct.accept(opener[0])  # no thought: straight into the call
    assert direct.phase == "lead" and allowed(direct, vocab) == {opener[1]}


def test_reasoning_matcher_masks_a_batch_as_row_by_row(tiny_models):
    import torch

    from handlers.constraints import mask_batch

    h = load(tiny_models, TINY_DEEPSEEK)
    vocab, tok = int(h.model.config.vocab_size), h.tokenizer
    grammar = h.compile_constraint({"type": "json_schema", "schema": OK}, INSIDE)
    thinking, answering = grammar.matcher(), grammar.matcher()
    answering.accept(tok.convert_tokens_to_ids("</think>"))
    call = h.tool_plan([{"name": "f", "parameters": OK}], {"name": "f"}).constraint
    leading = h.compile_constraint(call, INSIDE).matcher()  # forced opener "…f\n```json\n": a newline next
    leading.accept(tok.convert_tokens_to_ids("</think>"))
    while "\n" not in tok.decode(list(allowed(leading, vocab))[:1]):
        leading.accept(next(iter(allowed(leading, vocab))))
    logits = torch.randn(4, vocab)
    rows = logits.clone()
    for i, m in ((0, thinking), (2, answering), (3, leading)):
        m.mask_logits(rows[i])
    mask_batch(logits, [thinking, None, answering, leading])
    assert torch.equal(torch.isfinite(logits), torch.isfinite(rows))
    assert torch.isfinite(logits[3]).sum() == 1  # the newline of the opener, not banned as a control byte


# --- the engine on the scripted models ------------------------------------------------------------------

def generate(h, messages, max_tokens=40, constraint=None, template_kwargs=None, tools=None):
    ids = h.encode_chat(messages, tools, "", template_kwargs)
    plan = h.reasoning_plan(ids)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, constraint=constraint)
    engine = Engine(h, max_batch=1)
    seq = engine.add("r", ids, params, max_tokens, h.compile_constraint(constraint, plan))
    stream, thought, shown = ChatStreamFilter(plan.splitter() if plan else None), "", ""
    for out in run_to_completion(engine):
        t, a = stream(out.delta, out.finished)
        thought, shown = thought + t, shown + a
    reasoning, answer = plan.split(seq.text) if plan else (None, seq.text)
    assert (thought, shown) == (reasoning or "", answer)  # stream == non-stream
    return reasoning, answer, seq, plan


@pytest.mark.parametrize("model_id", [TINY_DEEPSEEK, TINY_QWEN3])
def test_scripted_thought_is_split_from_the_answer(tiny_models, model_id):
    h = load(tiny_models, model_id)
    reasoning, answer, seq, plan = generate(h, ASK)
    assert plan.inside == (model_id == TINY_DEEPSEEK)  # DeepSeek's template opened <think>
    assert (reasoning, answer, seq.finish_reason) == ("The user says goodbye", "Goodbye!", "stop")
    spent = plan.count_tokens(seq.token_ids, h.decode)
    assert spent == len(seq.token_ids) - 3  # all but "Good", "bye", "!"


def test_max_tokens_counts_the_thought(tiny_models):
    h = load(tiny_models, TINY_DEEPSEEK)
    reasoning, answer, seq, plan = generate(h, ASK, max_tokens=3)
    assert (reasoning, answer, seq.finish_reason) == ("The user says", "", "length")
    assert plan.count_tokens(seq.token_ids, h.decode) == 3


def test_thinking_off_answers_at_once(tiny_models):
    h = load(tiny_models, TINY_QWEN3)
    for kwargs in ({"enable_thinking": False}, {"reasoning_effort": "none"}):
        assert h.render_chat(ASK, None, kwargs).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        reasoning, answer, _, _ = generate(h, ASK, template_kwargs=kwargs)
        assert (reasoning, answer) == (None, "Goodbye!")


def test_a_batch_of_constrained_thinkers_masks_together(tiny_models):
    """Eight rows and more are masked in one kernel call (handlers/sampler.py): same answers."""
    h = load(tiny_models, TINY_DEEPSEEK)
    ids = h.encode_chat(ASK)
    plan, constraint = h.reasoning_plan(ids), {"type": "json_schema", "schema": OK}
    engine = Engine(h, max_batch=8)
    params = SamplingParams(temperature=0, max_tokens=40, constraint=constraint)
    seqs = [engine.add(f"r{i}", ids, params, 40, h.compile_constraint(constraint, plan)) for i in range(8)]
    run_to_completion(engine)
    splits = {plan.split(seq.text) for seq in seqs}
    assert len(splits) == 1 and all(seq.finish_reason == "stop" for seq in seqs)
    [(thought, answer)] = splits
    assert thought == "The user says goodbye" and jsonschema.validate(json.loads(answer), OK) is None


@pytest.mark.parametrize("model_id", [TINY_DEEPSEEK, TINY_QWEN3])
def test_json_schema_applies_after_a_free_thought(tiny_models, model_id):
    h = load(tiny_models, model_id)
    reasoning, answer, seq, _ = generate(h, ASK, constraint={"type": "json_schema", "schema": OK})
    assert reasoning == "The user says goodbye" and seq.finish_reason == "stop"
    jsonschema.validate(json.loads(answer), OK)


def test_forced_call_after_the_thought_is_parsed(tiny_models):
    h = load(tiny_models, TINY_QWEN3)
    tool = {"name": "get_mood", "parameters": OK}
    plan = h.tool_plan([tool], {"name": "get_mood"})
    reasoning, answer, _, _ = generate(h, ASK, max_tokens=120, constraint=plan.constraint, tools=[tool])
    content, calls = plan.finish(answer)
    assert reasoning == "The user says goodbye" and content == "" and [c.name for c in calls] == ["get_mood"]
    jsonschema.validate(json.loads(calls[0].arguments), OK)


# --- the front: typed reasoning events, SSE chunks and the sync body -------------------------------------

def reasoning_result() -> dict:
    return GenerateResult(outputs=[Output(index=0, text="Goodbye!", reasoning="The user says goodbye",
                                          reasoning_tokens=6, finish_reason="stop", prompt_tokens=5,
                                          completion_tokens=9)]).model_dump()


def test_front_streams_reasoning_content_and_never_in_content():
    events = [Event(type="delta", reasoning="The user"), Event(type="delta", reasoning=" says"),
              Event(type="delta", text="Goodbye!"), Event(type="done", result=reasoning_result())]
    out = asyncio.run(frames(watched(Client(), Metrics(), events),
                             StreamShape("chat.completion.chunk", chat=True, include_usage=True)))
    chunks = [json.loads(f[6:]) for f in out[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "The user says goodbye"  # " goodbye" resent
    assert "".join(d.get("content") or "" for d in deltas) == "Goodbye!"
    assert not any("reasoning_content" in d and "content" in d for d in deltas)
    assert chunks[-1]["usage"]["completion_tokens_details"] == {"reasoning_tokens": 6}


def test_front_sync_body_has_reasoning_content():
    body = chat_completion("id", 0, "m", GenerateResult.model_validate(reasoning_result()))
    message = body["choices"][0]["message"]
    assert (message["reasoning_content"], message["content"]) == ("The user says goodbye", "Goodbye!")
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 6}
    plain = GenerateResult(outputs=[Output(index=0, text="x", finish_reason="stop", prompt_tokens=1, completion_tokens=1)])
    assert "reasoning_content" not in chat_completion("id", 0, "m", plain)["choices"][0]["message"]
    assert "completion_tokens_details" not in chat_completion("id", 0, "m", plain)["usage"]
