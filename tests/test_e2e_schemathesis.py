"""Schema-driven fuzzing of the running API (schemathesis on ``/openapi.json``).

Every operation of the schema gets up to ``MAX_EXAMPLES`` requests that follow the schema and as
many that break it. Whatever comes in, the API must not answer 5xx, every error must be the OpenAI
envelope (Anthropic's on ``/v1/messages*``), and every response must carry ``X-Request-ID``. Some generated bodies are pointed at the
tiny served models (with a few tokens at most), so the fuzzing also reaches the workers without
loading the machine.
"""

from __future__ import annotations

import collections
import json
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.conftest import MINILM, TINY_CHATML, TINY_MISTRAL

MAX_EXAMPLES = int(os.environ.get("LLMHOST_FUZZ_EXAMPLES", "25"))  # more for a deeper local hunt
# Reloads a worker's model with random options: a test of its own (test_e2e_legacy), not fuzzed.
# Operations that reload or move workers: they would disturb the other tests sharing the stack.
EXCLUDED = {("POST", "/old/initialize"), ("POST", "/v1/workers/{name}/model")}
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_new_tokens", "max_output_tokens")
MAX_FUZZ_TOKENS = 4
LEGACY_DEFAULT_MODEL_ROUTES = ("/old/generate", "/old/stream")  # no model → the (slow) first default model


# Known fields this server refuses (400): dropped from some steered bodies so they reach a worker.
REFUSED = ("n", "logprobs", "top_logprobs", "tools", "tool_choice", "response_format", "frequency_penalty",
           "presence_penalty", "logit_bias", "echo", "best_of", "suffix", "stream_options", "dimensions")


def _clean_anthropic(body: dict) -> None:
    """An Anthropic body that can reach a worker: text content only, a final user turn, a text system."""
    messages = body.get("messages")
    for m in messages if isinstance(messages, list) else ():
        if isinstance(m, dict) and isinstance(m.get("content"), list):
            m["content"] = [b for b in m["content"] if isinstance(b, dict) and b.get("type") == "text"
                            and isinstance(b.get("text"), str)] or "hi"
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        messages[-1]["role"] = "user"
    if not isinstance(body.get("system"), str):
        body.pop("system", None)
    stops = body.get("stop_sequences")  # generated bodies may hold any JSON here (an int, a dict)
    if stops is not None and not (isinstance(stops, list) and all(isinstance(s, str) and s for s in stops)):
        body.pop("stop_sequences", None)


def _steer(body: object, model: str | None, legacy: bool, clean: bool = False, anthropic: bool = False) -> None:
    """Point a generated body at a served tiny model and keep its token budget small (in place)."""
    if not isinstance(body, dict):
        return
    if clean and anthropic and model is not None:
        _clean_anthropic(body)
    if isinstance(body.get("body"), dict):  # POST /v1/jobs wraps an endpoint's body
        _steer(body["body"], model, legacy=False, clean=clean)
    if model is not None and ("model" in body or clean):
        body["model"] = model
        if clean:
            for field in REFUSED:
                body.pop(field, None)
            messages = body.get("messages")
            for m in messages if isinstance(messages, list) else ():
                if isinstance(m, dict):  # keep the generated text, drop what is refused by design
                    if m.get("role") in ("tool", "function"):
                        m["role"] = "user"
                    for field in ("tool_calls", "function_call"):
                        m.pop(field, None)
                    if not isinstance(m.get("content"), (str, list)):
                        m["content"] = "hi"
    if legacy and not isinstance(body.get("model"), str):
        body["model"] = model or TINY_CHATML
    for field in TOKEN_FIELDS:
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_FUZZ_TOKENS:
            body[field] = MAX_FUZZ_TOKENS
    if legacy and "max_new_tokens" not in body:
        body["max_new_tokens"] = MAX_FUZZ_TOKENS
    if "max_tokens" not in body and "messages" in body:
        body["max_tokens"] = MAX_FUZZ_TOKENS


def _is_envelope(path: str, body: object) -> bool:
    """The OpenAI envelope, or Anthropic's on the Anthropic routes (``/v1/messages*``)."""
    if not isinstance(body, dict):
        return False
    err = body.get("error")
    if not isinstance(err, dict) or not isinstance(err.get("message"), str) or not isinstance(err.get("type"), str):
        return False
    if path.startswith("/v1/messages"):
        return set(body) == {"type", "error"} and body["type"] == "error" and set(err) == {"type", "message"}
    return set(body) == {"error"} and set(err) == {"message", "type", "param", "code"}


def _problems(path: str, status: int, headers, text: str) -> list[str]:
    out = []
    if status >= 500:
        out.append(f"server error {status}")
    if "x-request-id" not in {k.lower() for k in headers}:
        out.append("no X-Request-ID")
    if status >= 400:
        try:
            body = json.loads(text)
        except ValueError:
            return out + ["error body is not JSON"]
        if not _is_envelope(path, body):
            out.append("error body is not the route's error envelope")
    return out


@pytest.mark.timeout(240)
def test_schemathesis_finds_no_server_errors_and_only_envelopes(stack):
    schema = schemathesis.openapi.from_url(f"{stack.base_url}/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 13
    counts: collections.Counter[str] = collections.Counter()
    statuses: collections.Counter[int] = collections.Counter()
    by_label: collections.Counter[tuple[str, int]] = collections.Counter()
    failures: list[str] = []
    tested = 0

    for op in operations:
        if (op.method.upper(), op.path) in EXCLUDED:
            continue
        tested += 1
        legacy = op.path in LEGACY_DEFAULT_MODEL_ROUTES
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            label = f"{op.method.upper()} {op.path} [{mode.value}]"

            @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode),
                   model=st.sampled_from([None, None, TINY_CHATML, TINY_MISTRAL, MINILM]), clean=st.booleans())
            def run(case, model, clean) -> None:
                _steer(case.body, model, legacy, clean, anthropic=op.path.startswith("/v1/messages"))
                response = case.call(base_url=stack.base_url, timeout=60)
                counts[label] += 1
                statuses[response.status_code] += 1
                by_label[(label, response.status_code)] += 1
                for problem in _problems(op.path, response.status_code, response.headers, response.text):
                    failures.append(f"{label}: {problem}: {case.as_curl_command()} -> {response.text[:300]}")

            try:
                run()
            except Unsatisfiable:
                pass  # nothing to break in this operation (no parameters, no body)

    total = sum(counts.values())
    print(f"\nschemathesis: {tested} operations, {total} requests, statuses {dict(sorted(statuses.items()))}")
    for label, n in sorted(counts.items()):
        print(f"  {n:3d}  {label}  {dict(sorted((s, c) for (lb, s), c in by_label.items() if lb == label))}")
    assert not failures, "\n".join(failures[:20])
    assert tested >= 13 and total >= 13 * MAX_EXAMPLES
    assert any(s == 200 for s in statuses) and any(400 <= s < 500 for s in statuses)


# --- what the fuzzing found, pinned ----------------------------------------------------------------

def test_empty_prompt_is_400_not_a_worker_crash(http):
    for prompt in ("", ["ok", ""]):
        r = http.post("/v1/completions", json={"model": TINY_CHATML, "prompt": prompt, "max_tokens": 2})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text
    r = http.post("/old/generate", json={"model": TINY_CHATML, "prompt": "", "max_new_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text


def test_legacy_body_invalid_after_mapping_is_400(http):
    r = http.post("/old/generate", json={"model": TINY_CHATML, "prompt": "hi", "stop": ""})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "stop" and r.json()["error"]["code"] == "invalid_value"
    r = http.post("/old/stream", json={"model": TINY_CHATML, "messages": [{"role": "wizard", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].role", r.text


def test_mistral_chat_without_a_user_turn_is_400(http):
    r = http.post("/v1/chat/completions", json={"model": TINY_MISTRAL, "max_tokens": 2,
                                                "messages": [{"role": "system", "content": "be brief"}]})
    assert r.status_code == 400 and "user" in r.json()["error"]["message"], r.text


@pytest.mark.parametrize("extreme", [{"temperature": 5e-324}, {"top_p": 5e-324}, {"temperature": 1e-300, "top_p": 1e-300}])
def test_vanishing_temperature_or_top_p_decodes_greedily(http, extreme):
    base = {"model": TINY_CHATML, "messages": [{"role": "user", "content": "the sea"}], "max_tokens": 6, "seed": 1}
    r = http.post("/v1/chat/completions", json={**base, **extreme})
    assert r.status_code == 200, r.text
    greedy = http.post("/v1/chat/completions", json={**base, "temperature": 0}).json()
    assert r.json()["choices"][0]["message"]["content"] == greedy["choices"][0]["message"]["content"]
