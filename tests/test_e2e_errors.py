"""Every error is the OpenAI envelope with the right status; nothing waits forever."""

import time

import httpx
import openai
import pytest

from tests.conftest import SMOL, TINY_CHATML, TINY_LLAMA3, TINY_MISTRAL

MSG = [{"role": "user", "content": "hi"}]


def envelope(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


def test_unknown_model_is_404(client, http):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="acme/nope", messages=MSG)
    assert e.value.code == "model_not_found"
    err = envelope(http.post("/v1/chat/completions", json={"model": "../../etc", "messages": MSG}), 404)
    assert err["code"] == "model_not_found" and err["param"] == "model"


def test_present_but_unserved_model_is_503_at_once(http):
    started = time.perf_counter()
    err = envelope(http.post("/v1/chat/completions", json={"model": TINY_LLAMA3, "messages": MSG}), 503)
    assert time.perf_counter() - started < 2.0
    assert TINY_LLAMA3 in err["message"] and err["code"] == "model_not_served"


def test_context_length_exceeded(client, http):
    long = [{"role": "user", "content": "sea " * 2000}]  # the tiny models have 512 positions
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=TINY_CHATML, messages=long)
    assert e.value.code == "context_length_exceeded"
    err = envelope(http.post("/v1/chat/completions", json={"model": TINY_CHATML, "messages": long, "stream": True}), 400)
    assert err["code"] == "context_length_exceeded"
    err = envelope(http.post("/v1/completions", json={"model": TINY_CHATML, "prompt": "hi", "max_tokens": 5000}), 400)
    assert err["code"] == "context_length_exceeded" and "512" in err["message"]


@pytest.mark.parametrize("body,param", [
    ({"messages": MSG}, "model"),
    ({"model": TINY_CHATML}, "messages"),
    ({"model": TINY_CHATML, "messages": []}, "messages"),
    ({"model": TINY_CHATML, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"model": TINY_CHATML, "messages": MSG, "temperature": 5}, "temperature"),
    ({"model": TINY_CHATML, "messages": MSG, "max_tokens": 0}, "max_tokens"),
    ({"model": TINY_CHATML, "messages": MSG, "n": 0}, "n"),
    ({"model": TINY_CHATML, "messages": MSG, "top_logprobs": 3}, "top_logprobs"),
    ({"model": TINY_CHATML, "messages": MSG, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"model": TINY_CHATML, "messages": MSG, "logit_bias": {"abc": 1}}, "logit_bias"),
    ({"model": TINY_CHATML, "messages": MSG, "logit_bias": {"5": 101}}, "logit_bias"),
    ({"model": TINY_CHATML, "messages": MSG, "response_format": {"type": "yaml"}}, "response_format.type"),
    ({"model": TINY_CHATML, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0]"),
])
def test_malformed_bodies_are_400_envelopes(http, body, param):
    err = envelope(http.post("/v1/chat/completions", json=body), 400)
    assert err["type"] == "invalid_request_error" and err["param"] == param


def test_invalid_json_is_400(http):
    err = envelope(http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert "JSON" in err["message"]


def test_mistral_roles_must_alternate(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=TINY_MISTRAL, messages=MSG + MSG)
    assert "alternate" in e.value.message


@pytest.mark.parametrize("method,path", [("POST", "/v1/audio/transcriptions"), ("POST", "/v1/audio/speech"),
                                         ("POST", "/v1/fine_tuning/jobs"), ("GET", "/v1/fine_tuning/jobs")])
def test_not_implemented_routes_are_501(http, method, path):
    err = envelope(http.request(method, path), 501)
    assert err["type"] == "not_implemented"


def test_unknown_route_is_404_envelope(http):
    envelope(http.get("/v1/nothing-here"), 404)


def test_request_timeout_ends_with_error_and_cancels(stack):
    """A request that outlives LLMHOST_REQUEST_TIMEOUT gets a 504 envelope; its job is cancelled and
    the worker is free again right after (it stopped generating)."""
    url = stack.start_api("api-timeout", LLMHOST_REQUEST_TIMEOUT="1.5")
    body = {"model": SMOL, "messages": [{"role": "user", "content": "Write a very long story."}],
            "max_tokens": 1500, "temperature": 0, "ignore_eos": True}  # long, whatever the model says
    started = time.perf_counter()
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    assert time.perf_counter() - started < 5
    err = envelope(r, 504)
    assert err["code"] == "request_timeout"
    cancelled = [k for k in stack.redis.scan_iter("llmhost:job:*") if stack.redis.hget(k, "status") == b"cancelled"]
    assert cancelled
    # The worker stopped that generation: a short request is answered promptly.
    started = time.perf_counter()
    ok = httpx.post(f"{url}/v1/chat/completions", json={**body, "max_tokens": 2}, timeout=30)
    assert ok.status_code == 200 and time.perf_counter() - started < 5
    # Streams are bounded the same way: an error event, then [DONE].
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=30) as s:
        lines = [line for line in s.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and "request_timeout" in lines[-2]
