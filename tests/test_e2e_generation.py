"""Chat and text completions through the whole stack, with the official openai SDK."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SMOL, TINY_CHATML, TINY_MISTRAL

HELLO = [{"role": "user", "content": "Tell me about the sea."}]


def collect(stream):
    chunks = list(stream)
    text = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
    return chunks, text


@pytest.mark.slow
def test_smollm2_knows_paris(client):
    r = client.chat.completions.create(
        model=SMOL, temperature=0,
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}])
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert r.object == "chat.completion" and r.model == SMOL and r.id.startswith("chatcmpl-")


@pytest.mark.parametrize("model", [TINY_CHATML, TINY_MISTRAL, pytest.param(SMOL, marks=pytest.mark.slow)])
def test_greedy_stream_equals_non_stream(client, model):
    kwargs = dict(model=model, messages=HELLO, temperature=0, max_tokens=40)
    whole = client.chat.completions.create(**kwargs)
    chunks, text = collect(client.chat.completions.create(stream=True, **kwargs))
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices[0].finish_reason is not None
    assert len({c.id for c in chunks}) == 1


def test_stream_wire_format_ends_with_done(http):
    with http.stream("POST", "/v1/chat/completions", json={
            "model": TINY_CHATML, "messages": HELLO, "max_tokens": 5, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    payloads = [json.loads(line[6:]) for line in lines[:-1]]
    usage_chunk = payloads[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] <= 5
    assert sum(1 for p in payloads for c in p["choices"] if c["finish_reason"]) == 1


def test_usage_is_exact(client, stack):
    from transformers import AutoTokenizer

    r = client.chat.completions.create(model=TINY_CHATML, messages=HELLO, temperature=0, max_tokens=7)
    assert r.usage.completion_tokens == 7 and r.choices[0].finish_reason == "length"
    assert r.usage.total_tokens == r.usage.prompt_tokens + 7
    tok = AutoTokenizer.from_pretrained(stack.models_dir / TINY_CHATML)
    prompt = tok.apply_chat_template(HELLO, tokenize=False, add_generation_prompt=True)
    assert r.usage.prompt_tokens == len(tok.encode(prompt, add_special_tokens=False))


def test_max_completion_tokens_and_text_parts(client):
    r = client.chat.completions.create(
        model=TINY_CHATML, temperature=0, max_completion_tokens=3,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Tell me about "}, {"type": "text", "text": "the sea."}]}])
    same = client.chat.completions.create(model=TINY_CHATML, temperature=0, max_tokens=3, messages=HELLO)
    assert r.usage.completion_tokens == 3
    assert r.choices[0].message.content == same.choices[0].message.content


def test_stop_strings_cut_output_stream_and_not(client):
    base = client.chat.completions.create(model=TINY_CHATML, messages=HELLO, temperature=0, max_tokens=30)
    text = base.choices[0].message.content
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assert stop.strip()
    cut = text[: text.index(stop)]
    r = client.chat.completions.create(model=TINY_CHATML, messages=HELLO, temperature=0, max_tokens=30, stop=[stop, "zzzz"])
    assert r.choices[0].message.content == cut and r.choices[0].finish_reason == "stop"
    _, streamed = collect(client.chat.completions.create(
        model=TINY_CHATML, messages=HELLO, temperature=0, max_tokens=30, stop=stop, stream=True))
    assert streamed == cut


def test_seed_reproducible_under_sampling(client):
    kwargs = dict(model=TINY_CHATML, messages=HELLO, temperature=1.0, top_p=0.9, max_tokens=20)
    a = client.chat.completions.create(seed=1234, **kwargs).choices[0].message.content
    b = client.chat.completions.create(seed=1234, **kwargs).choices[0].message.content
    others = {client.chat.completions.create(seed=s, **kwargs).choices[0].message.content for s in (1, 2, 3)}
    assert a == b
    assert len(others | {a}) > 1


def test_completions_prompt_list_and_stream(client):
    r = client.completions.create(model=TINY_CHATML, prompt=["Once upon", "The sea"], temperature=0, max_tokens=6)
    assert [c.index for c in r.choices] == [0, 1] and r.object == "text_completion"
    first = client.completions.create(model=TINY_CHATML, prompt="Once upon", temperature=0, max_tokens=6)
    single = client.completions.create(model=TINY_CHATML, prompt="The sea", temperature=0, max_tokens=6)
    assert [c.text for c in r.choices] == [first.choices[0].text, single.choices[0].text]
    assert r.usage.prompt_tokens == first.usage.prompt_tokens + single.usage.prompt_tokens
    assert r.usage.completion_tokens == first.usage.completion_tokens + single.usage.completion_tokens
    chunks = list(client.completions.create(model=TINY_CHATML, prompt="The sea", temperature=0, max_tokens=6, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == single.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [single.choices[0].finish_reason]


def test_completions_default_max_tokens_is_16(client):
    r = client.completions.create(model=TINY_CHATML, prompt="The sea", temperature=0)
    assert r.usage.completion_tokens <= 16
    assert r.choices[0].finish_reason == "length" or r.usage.completion_tokens < 16
