"""OpenAI fidelity through the stack: each sampling parameter changes the output as the reference
says, n choices, logprobs equal to a direct transformers forward pass, echo."""

from __future__ import annotations

import shutil
import time
from collections import Counter

import openai
import pytest
import torch

from tests.conftest import TINY_CHATML

FP32 = "acme/tiny-chatml-fp32"
MSG = [{"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture(scope="module")
def fp32_model(stack):
    """A worker of the tiny ChatML model in fp32, so logprobs can be compared to 1e-4."""
    shutil.copytree(stack.models_dir / TINY_CHATML, stack.models_dir / FP32)
    stack.start_worker(FP32, LLMHOST_DTYPE="float32")
    end = time.monotonic() + 60
    while not stack.ready_workers().get(FP32):
        assert time.monotonic() < end, "fp32 worker did not start"
        time.sleep(0.2)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = stack.models_dir / FP32
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(folder)


def chat(client, **kw):
    return client.chat.completions.create(model=kw.pop("model", TINY_CHATML), messages=kw.pop("messages", MSG), **kw)


def greedy_text(client, **kw) -> str:
    return chat(client, temperature=0, max_tokens=30, **kw).choices[0].message.content


def test_n_choices_are_seeded_and_count_the_prompt_once(client):
    r = chat(client, n=3, temperature=1.0, seed=5, max_tokens=12)
    single = chat(client, n=1, temperature=1.0, seed=5, max_tokens=12)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) > 1
    assert r.choices[0].message.content == single.choices[0].message.content  # choice 0 uses the seed itself
    assert r.usage.prompt_tokens == single.usage.prompt_tokens
    assert single.usage.completion_tokens <= r.usage.completion_tokens <= 36
    again = chat(client, n=3, temperature=1.0, seed=5, max_tokens=12)
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]


def test_n_choices_stream_assembles_to_the_same(client):
    kw = dict(n=2, temperature=1.0, seed=9, max_tokens=10)
    whole = chat(client, **kw)
    chunks = list(chat(client, stream=True, **kw))
    texts, finishes, roles = {0: "", 1: ""}, Counter(), Counter()
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] += ch.delta.content or ""
            roles[ch.index] += ch.delta.role == "assistant"
            finishes[ch.index] += ch.finish_reason is not None
    assert texts == {c.index: c.message.content for c in whole.choices}
    assert roles == {0: 1, 1: 1} and finishes == {0: 1, 1: 1}


def test_top_k_1_and_min_p_1_are_greedy(client):
    base = greedy_text(client)
    assert greedy_text(client, extra_body={"top_k": 1}) == base
    sampled = [chat(client, temperature=1.5, seed=s, max_tokens=30, extra_body={"top_k": 1}).choices[0].message.content
               for s in (1, 2)]
    assert sampled == [base, base]
    assert chat(client, temperature=1.5, seed=3, max_tokens=30, extra_body={"min_p": 1.0}).choices[0].message.content == base


def test_logit_bias_forces_and_forbids_tokens(client, stack):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(stack.models_dir / TINY_CHATML)
    target = tok.encode(" sea", add_special_tokens=False)[0]
    forced = chat(client, temperature=0, max_tokens=5, logit_bias={str(target): 100})
    assert forced.choices[0].message.content == tok.decode([target]) * 5
    base = greedy_text(client)
    first = tok.encode(base, add_special_tokens=False)[0]
    assert not greedy_text(client, logit_bias={str(first): -100}).startswith(tok.decode([first]))


def test_penalties_reduce_repetition(client):
    base = chat(client, temperature=0, max_tokens=60).choices[0].message.content
    most = Counter(base.split()).most_common(1)[0][1]
    for extra in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}, {"extra_body": {"repetition_penalty": 2.0}}):
        text = chat(client, temperature=0, max_tokens=60, **extra).choices[0].message.content
        assert text != base, extra
        assert Counter(text.split()).most_common(1)[0][1] <= most, extra


def test_stop_token_ids_and_ignore_eos(client, stack):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(stack.models_dir / TINY_CHATML)
    r = chat(client, temperature=0, max_tokens=20, logprobs=True)
    ids = [tok.convert_tokens_to_ids(tok.tokenize(e.token)[0]) for e in r.choices[0].logprobs.content]
    stop_at = next(i for i in range(3, len(ids)) if ids[i] not in ids[:i])
    cut = chat(client, temperature=0, max_tokens=20, extra_body={"stop_token_ids": [ids[stop_at]]})
    assert cut.choices[0].finish_reason == "stop" and cut.usage.completion_tokens == stop_at
    # A prompt whose greedy answer ends by itself runs to max_tokens with ignore_eos.
    for prompt in ("hi", "x", "Hello there", "What?", "sea", "a b c"):
        msgs = [{"role": "user", "content": prompt}]
        ended = chat(client, temperature=0, max_tokens=200, messages=msgs)
        if ended.choices[0].finish_reason == "stop":
            break
    else:
        pytest.skip("no prompt of the tiny model stops by itself")
    n = ended.usage.completion_tokens + 5
    longer = chat(client, temperature=0, max_tokens=n, messages=msgs, extra_body={"ignore_eos": True})
    assert longer.choices[0].finish_reason == "length" and longer.usage.completion_tokens == n


def test_chat_logprobs_equal_a_direct_forward_pass(client, fp32_model):
    model, tok = fp32_model
    r = chat(client, model=FP32, temperature=0, max_tokens=12, logprobs=True, top_logprobs=5)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    ids = tok.encode(tok.apply_chat_template(MSG, tokenize=False, add_generation_prompt=True), add_special_tokens=False)
    with torch.inference_mode():  # the same greedy path, one full forward per token, no cache
        for entry in content:
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)
            token = int(lp.argmax())
            assert entry.bytes == _token_bytes(tok, token)
            assert abs(entry.logprob - float(lp[token])) < 1e-3
            assert len(entry.top_logprobs) == 5
            assert entry.top_logprobs[0].logprob == pytest.approx(float(lp.max()), abs=1e-3)
            assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)
            ids.append(token)


def _token_bytes(tok, token: int) -> list[int]:
    from handlers.text import byte_decoder as _byte_decoder

    table = _byte_decoder()
    return [table[ch] for ch in tok.convert_ids_to_tokens(token)]


def test_completion_echo_logprobs_cover_the_prompt(client, fp32_model):
    model, tok = fp32_model
    prompt = "The sea is deep and the sky"
    r = client.completions.create(model=FP32, prompt=prompt, max_tokens=4, temperature=0, echo=True, logprobs=3)
    choice = r.choices[0]
    assert choice.text.startswith(prompt)
    ids = tok.encode(prompt)
    lps = choice.logprobs
    assert lps.token_logprobs[0] is None and lps.top_logprobs[0] is None
    assert len(lps.tokens) == len(ids) + r.usage.completion_tokens
    with torch.inference_mode():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    for t in range(1, len(ids)):
        assert abs(lps.token_logprobs[t] - float(lp[t - 1, ids[t]])) < 1e-3
        # Alternatives are keyed by text (the legacy format), so tokens that decode alike merge.
        assert 1 <= len(lps.top_logprobs[t]) <= 3
        assert max(lps.top_logprobs[t].values()) == pytest.approx(float(lp[t - 1].max()), abs=1e-3)
    assert lps.text_offset[0] == 0 and lps.text_offset == sorted(lps.text_offset)
    plain = client.completions.create(model=FP32, prompt=prompt, max_tokens=4, temperature=0)
    assert choice.text == prompt + plain.choices[0].text


def test_streamed_logprobs_match(client):
    kw = dict(temperature=0, max_tokens=10, logprobs=True, top_logprobs=2)
    whole = chat(client, **kw).choices[0].logprobs.content
    streamed = [e for c in chat(client, stream=True, **kw) for ch in c.choices if ch.logprobs for e in ch.logprobs.content]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in whole]


def test_unknown_fields_accepted_known_unsupported_refused(client, http):
    assert chat(client, temperature=0, max_tokens=2, extra_body={"some_vendor_flag": True}).choices
    r = http.post("/v1/completions", json={"model": TINY_CHATML, "prompt": "x", "best_of": 3})
    assert r.status_code == 400 and r.json()["error"]["param"] == "best_of"
    r = http.post("/v1/completions", json={"model": TINY_CHATML, "prompt": "x", "suffix": "y"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "suffix"
    with pytest.raises(openai.BadRequestError):
        chat(client, extra_body={"functions": [{"name": "f", "parameters": {}}]})  # deprecated; tools are supported


def test_tokenize_and_detokenize(http, stack):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(stack.models_dir / TINY_CHATML)
    r = http.post("/tokenize", json={"model": TINY_CHATML, "prompt": "The sea is deep"}).json()
    assert r["tokens"] == tok.encode("The sea is deep") and r["count"] == len(r["tokens"]) and r["max_model_len"] == 512
    chat_ids = http.post("/tokenize", json={"model": TINY_CHATML, "messages": MSG}).json()["tokens"]
    templated = tok.apply_chat_template(MSG, tokenize=False, add_generation_prompt=True)
    assert chat_ids == tok.encode(templated, add_special_tokens=False)
    assert http.post("/detokenize", json={"model": TINY_CHATML, "tokens": r["tokens"]}).json()["prompt"] == "The sea is deep"
    bad = http.post("/detokenize", json={"model": TINY_CHATML, "tokens": [10**9]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    assert http.post("/tokenize", json={"model": "acme/nope", "prompt": "x"}).status_code == 404
