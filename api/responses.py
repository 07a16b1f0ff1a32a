"""OpenAI response bodies built from job results: shared by sync answers and ``GET /v1/jobs/{id}``."""

from __future__ import annotations

import base64
from typing import Any

from tasks.contract.payloads import EmbedResult, GenerateResult, TokenLogprob, ToolCall

from .anthropic import messages as anthropic


def usage(prompt: int, completion: int, reasoning: int | None = None) -> dict[str, Any]:
    """OpenAI's ``usage``; ``reasoning``: of the completion tokens, those spent thinking (reasoning
    models only, as ``completion_tokens_details.reasoning_tokens``)."""
    body: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                            "total_tokens": prompt + completion}
    if reasoning is not None:
        body["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return body


def totals(result: GenerateResult) -> dict[str, Any]:
    counted = result.usage()  # the same count as the metrics'
    thinks = any(o.reasoning is not None for o in result.outputs)
    return usage(counted.prompt, counted.completion, counted.reasoning if thinks else None)


def chat_logprobs(entries: list[TokenLogprob] | None) -> dict[str, Any] | None:
    """The chat format: one object per token, with its exact bytes and its alternatives."""
    if entries is None:
        return None
    return {"content": [{"token": e.token, "logprob": e.logprob, "bytes": e.bytes,
                         "top_logprobs": [{"token": t, "logprob": v, "bytes": b} for t, v, b in e.top]}
                        for e in entries], "refusal": None}


def completion_logprobs(entries: list[TokenLogprob] | None, start_offset: int = 0) -> dict[str, Any] | None:
    """The legacy completions format: parallel arrays, alternatives as {token: logprob}."""
    if entries is None:
        return None
    offsets, pos = [], start_offset
    for e in entries:
        offsets.append(pos)
        pos += len(e.token)
    return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t: v for t, v, _ in reversed(e.top)} if e.logprob is not None else None
                             for e in entries],  # reversed: on equal texts the likelier one wins
            "text_offset": offsets}


def tool_calls(calls: list[ToolCall] | None) -> list[dict[str, Any]]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls or ()]


def chat_completion(job_id: str, created: int, model: str, result: GenerateResult) -> dict[str, Any]:
    return {
        "id": job_id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{
            "index": o.index,
            "message": {"role": "assistant", "content": None if o.tool_calls and not o.text else o.text,
                        "refusal": None, "tool_calls": tool_calls(o.tool_calls),
                        # A reasoning model's thought, as vLLM and llama.cpp name it.
                        **({"reasoning_content": o.reasoning} if o.reasoning is not None else {})},
            "logprobs": chat_logprobs(o.logprobs), "finish_reason": o.finish_reason,
        } for o in result.outputs],
        "usage": totals(result), "system_fingerprint": None,
    }


def text_completion(job_id: str, created: int, model: str, result: GenerateResult) -> dict[str, Any]:
    choices = []
    for o in result.outputs:
        entries = o.logprobs
        if o.prompt_logprobs is not None and entries is not None:
            entries = o.prompt_logprobs + entries  # echo: the prompt's tokens first
        choices.append({"index": o.index, "text": o.text, "logprobs": completion_logprobs(entries),
                        "finish_reason": o.finish_reason})
    return {
        "id": job_id, "object": "text_completion", "created": created, "model": model,
        "choices": choices, "usage": totals(result), "system_fingerprint": None,
    }


def _b64(vector: list[float]) -> str:
    import array
    import sys

    arr = array.array("f", vector)  # float32, as OpenAI encodes them
    if sys.byteorder != "little":
        arr.byteswap()
    return base64.b64encode(arr.tobytes()).decode()


def embeddings(model: str, result: EmbedResult, encoding_format: str) -> dict[str, Any]:
    return {
        "object": "list", "model": model,
        "data": [{"object": "embedding", "index": i, "embedding": _b64(v) if encoding_format == "base64" else v}
                 for i, v in enumerate(result.vectors)],
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }


def for_endpoint(endpoint: str, job_id: str, created: int, model: str, meta: dict, result: dict) -> dict[str, Any]:
    """The body the endpoint would have returned, from a stored raw result."""
    if endpoint == "/v1/chat/completions":
        return chat_completion(job_id, created, model, GenerateResult.model_validate(result))
    if endpoint == "/v1/completions":
        return text_completion(job_id, created, model, GenerateResult.model_validate(result))
    if endpoint == "/v1/messages":
        return anthropic.message(job_id, model, GenerateResult.model_validate(result))
    if endpoint == "/v1/embeddings":
        return embeddings(model, EmbedResult.model_validate(result), meta.get("encoding_format", "float"))
    return result
