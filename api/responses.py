"""OpenAI response bodies built from job results: shared by sync answers and ``GET /v1/jobs/{id}``."""

from __future__ import annotations

import base64
from typing import Any


from tasks.payloads import EmbedResult, GenerateResult, ToolCall


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _totals(result: GenerateResult) -> dict[str, int]:
    # One prompt is shared by all choices of a chat; completions count each prompt once.
    prompts = {o.index: o.prompt_tokens for o in result.outputs}
    return usage(sum(prompts.values()), sum(o.completion_tokens for o in result.outputs))


def tool_calls(calls: list[ToolCall] | None) -> list[dict[str, Any]]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls or ()]


def chat_completion(job_id: str, created: int, model: str, result: GenerateResult) -> dict[str, Any]:
    return {
        "id": job_id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{
            "index": o.index,
            "message": {"role": "assistant", "content": None if o.tool_calls and not o.text else o.text,
                        "refusal": None, "tool_calls": tool_calls(o.tool_calls)},
            "logprobs": None, "finish_reason": o.finish_reason,
        } for o in result.outputs],
        "usage": _totals(result), "system_fingerprint": None,
    }


def text_completion(job_id: str, created: int, model: str, result: GenerateResult) -> dict[str, Any]:
    return {
        "id": job_id, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": o.index, "text": o.text, "logprobs": None, "finish_reason": o.finish_reason}
                    for o in result.outputs],
        "usage": _totals(result), "system_fingerprint": None,
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
    if endpoint == "/v1/embeddings":
        return embeddings(model, EmbedResult.model_validate(result), meta.get("encoding_format", "float"))
    return result
