"""Property tests (hypothesis) of the front's parsers and small rules; no stack, no torch."""

from __future__ import annotations

import json
import re
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from api.errors import _loc_to_param, from_validation_error
from api.middleware import sane_request_id
from api.routes.legacy import _as_openai
from api.schemas.chat import ChatCompletionRequest, ChatMessage
from api.schemas.completions import CompletionRequest
from api.schemas.legacy import GenerateRequest
from api.security import KeyChecker, bearer_token
from tasks.contract.errors import JobError, retry_after
from tasks.contract.payloads import MIN_TEMPERATURE, MIN_TOP_P, SamplingParams
from tasks.contract.settings import Settings

settings.register_profile("llmhost", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("llmhost")

texts = st.text(max_size=40)
roles = st.sampled_from(["system", "developer", "user", "assistant"])
idents = st.text(alphabet=string.ascii_letters + "_", min_size=1, max_size=12)


# --- ChatMessage.flatten ------------------------------------------------------------------------

@given(role=roles, content=texts, index=st.integers(0, 50))
def test_flatten_string_content(role, content, index):
    m = ChatMessage.model_validate({"role": role, "content": content}).flatten(index)
    assert m.content == content
    assert m.role == ("system" if role == "developer" else role)


@given(role=roles, parts=st.lists(texts, min_size=1, max_size=6), index=st.integers(0, 50))
def test_flatten_text_parts_are_joined(role, parts, index):
    msg = ChatMessage.model_validate({"role": role, "content": [{"type": "text", "text": t} for t in parts]})
    assert msg.flatten(index).content == "".join(parts)


@given(parts=st.lists(texts, min_size=1, max_size=4), bad=st.integers(0, 3), kind=st.sampled_from(["image_url", "input_audio", "file"]),
       index=st.integers(0, 50))
def test_flatten_refuses_a_non_text_part_naming_it(parts, bad, kind, index):
    bad %= len(parts)
    content = [{"type": "text", "text": t} for t in parts]
    content[bad] = {"type": kind, kind: {"url": "x"}}
    with pytest.raises(JobError) as e:
        ChatMessage.model_validate({"role": "user", "content": content}).flatten(index)
    assert e.value.status_code == 400 and e.value.param == f"messages[{index}].content[{bad}]"


@given(role=st.sampled_from(["tool", "function"]), content=texts, index=st.integers(0, 50))
def test_flatten_refuses_tool_messages(role, content, index):
    with pytest.raises(JobError) as e:
        ChatMessage.model_validate({"role": role, "content": content}).flatten(index)
    assert e.value.status_code == 400 and e.value.param == f"messages[{index}]"


# --- stop strings ---------------------------------------------------------------------------------

def _chat(**fields):
    return ChatCompletionRequest.model_validate({"model": "a/b", "messages": [{"role": "user", "content": "x"}], **fields})


@given(stop=st.one_of(st.text(min_size=1, max_size=10), st.lists(st.text(min_size=1, max_size=10), max_size=4)))
def test_stop_is_always_a_list_of_the_given_strings(stop):
    req = _chat(stop=stop)
    assert req.stop == ([stop] if isinstance(stop, str) else stop)
    assert CompletionRequest.model_validate({"model": "a/b", "prompt": "x", "stop": stop}).stop == req.stop


@given(stop=st.lists(st.text(max_size=5), min_size=1, max_size=4).filter(lambda s: "" in s))
def test_empty_stop_strings_are_refused(stop):
    with pytest.raises(ValidationError) as e:
        _chat(stop=stop)
    assert from_validation_error(e.value).param.startswith("stop")


# --- error parameter names ------------------------------------------------------------------------

loc_parts = st.lists(st.one_of(idents, st.integers(0, 99)), min_size=1, max_size=6)


@given(where=st.sampled_from(["body", "query", "path"]), parts=loc_parts)
def test_loc_to_param_reads_like_the_request(where, parts):
    param = _loc_to_param((where, *parts))
    # Parse it back: name(.name | [i])*, the same parts in the same order.
    tokens = re.findall(r"\[(\d+)\]|\.?([A-Za-z_]+)", param)
    back = [int(i) if i else name for i, name in tokens]
    assert back == parts
    assert not param.startswith(".")
    assert re.fullmatch(r"(\[\d+\]|[A-Za-z_]+)(\.[A-Za-z_]+|\[\d+\])*", param)


@given(prefix=st.sampled_from(["", "body"]), stop=st.just([""]))
def test_validation_errors_become_400_envelopes(prefix, stop):
    with pytest.raises(ValidationError) as e:
        _chat(stop=stop)
    err = from_validation_error(e.value, prefix=prefix)
    assert err.status_code == 400 and err.code == "invalid_value" and err.type == "invalid_request_error"
    assert err.param == (f"{prefix}.stop" if prefix else "stop") and err.message.startswith(err.param)


# --- the /old request mapping ---------------------------------------------------------------------

legacy_common = st.fixed_dictionaries({}, optional={
    "model": st.just("a/b"), "max_new_tokens": st.integers(1, 10_000), "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1, exclude_min=True), "seed": st.integers(-(2**63), 2**63 - 1),
    "stop": st.one_of(st.none(), texts, st.lists(texts, max_size=3)),
})


@given(common=legacy_common, prompt=st.one_of(st.none(), texts),
       messages=st.one_of(st.none(), st.lists(st.fixed_dictionaries({"role": roles, "content": texts}), max_size=3)),
       stream=st.booleans())
def test_legacy_mapping_is_faithful_or_a_400(common, prompt, messages, stream):
    body = {**common, **({"prompt": prompt} if prompt is not None else {}),
            **({"messages": messages} if messages is not None else {})}
    req = GenerateRequest.model_validate(body)
    try:
        out = _as_openai(req, "default/model", stream=stream)
    except JobError as e:  # never anything else: a 500 would be a bug
        assert e.status_code == 400 and e.param
        return
    assert (prompt is None) != (messages is None)
    assert isinstance(out, CompletionRequest if prompt is not None else ChatCompletionRequest)
    assert out.model == common.get("model", "default/model") and out.stream is stream
    assert out.max_tokens == req.max_new_tokens and out.temperature == req.temperature and out.top_p == req.top_p
    assert out.seed == req.seed
    if prompt:
        assert out.prompts() == [prompt]
    elif prompt is not None:  # an empty prompt is refused when the job is made, not a worker crash
        with pytest.raises(JobError):
            out.prompts()


# --- guards, ids, overload, keys, settings --------------------------------------------------------

@given(temperature=st.floats(0, 2), top_p=st.floats(0, 1, exclude_min=True))
def test_stable_sampling(temperature, top_p):
    out = SamplingParams(temperature=temperature, top_p=top_p)
    assert out.temperature == 0.0 or out.temperature >= MIN_TEMPERATURE
    assert out.top_p >= MIN_TOP_P
    if temperature == 0 or temperature >= MIN_TEMPERATURE:
        assert out.temperature == temperature
    if top_p >= MIN_TOP_P:
        assert out.top_p == top_p


@given(value=st.text(max_size=80))
def test_request_ids_are_echoed_only_when_sane(value):
    out = sane_request_id(value)
    assert out is None or (out == value and 1 <= len(value) <= 64 and re.fullmatch(r"[A-Za-z0-9._-]+", value))


@given(limit=st.integers(1, 10_000), extra=st.integers(0, 10**6))
def test_retry_after_is_1_to_5_and_grows_with_depth(limit, extra):
    depth = limit + extra
    assert 1 <= retry_after(depth, limit) <= 5
    assert retry_after(depth, limit) <= retry_after(depth + limit, limit)


keys = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=40)


@given(configured=st.lists(keys, min_size=1, max_size=5), given_key=keys)
def test_a_key_is_valid_exactly_when_configured(configured, given_key):
    checker = KeyChecker(configured)
    assert checker.valid(given_key) == (given_key in configured)
    assert bearer_token([(b"authorization", f"Bearer {given_key}".encode())]) == given_key


@given(values=st.lists(keys, max_size=5))
def test_key_lists_parse_the_same_as_json_or_commas(values):
    assert Settings(api_keys=json.dumps(values)).api_keys == values
    assert Settings(api_keys=",".join(values)).api_keys == values
    assert Settings(api_keys=" , ".join(values)).api_keys == values
