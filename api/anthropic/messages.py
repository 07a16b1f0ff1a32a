"""The Anthropic message object, built from a job's result; its parts are shared with the stream so
that the SDK's ``messages.stream()`` assembles the very message a non-streamed call returns."""

from __future__ import annotations

import json
import uuid
from typing import Any

from tasks.contract.payloads import GenerateResult, Output, ToolCall


def new_message_id() -> str:
    """``msg_`` and 32 hex digits: the message's id is its job's id too (``GET /v1/jobs/{id}``)."""
    return f"msg_{uuid.uuid4().hex}"


def tool_use_id(call: ToolCall) -> str:
    """The worker's call id (each family draws its own) under Anthropic's ``toolu_`` prefix. A client
    sends it back in ``tool_use`` / ``tool_result`` blocks; the family renders those ids the way it
    renders any client's (Mistral's digest of them, for one), so a call and its result still match."""
    return call.id if call.id.startswith("toolu_") else "toolu_" + call.id.removeprefix("call_")


def tool_input(call: ToolCall) -> dict[str, Any]:
    """A call's arguments as the object Anthropic sends (the worker's parsers only make objects)."""
    value = json.loads(call.arguments or "{}")
    return value if isinstance(value, dict) else {}


def tool_use_block(call: ToolCall, input: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": tool_use_id(call), "name": call.name, "input": input}


def stop_reason(o: Output) -> tuple[str, str | None]:
    """(``stop_reason``, ``stop_sequence``) of a finished output."""
    if o.finish_reason == "tool_calls":
        return "tool_use", None
    if o.finish_reason == "length":
        return "max_tokens", None
    if o.stop_sequence is not None:
        return "stop_sequence", o.stop_sequence
    return "end_turn", None


def usage(o: Output) -> dict[str, int]:
    # No prompt caching on the wire (the worker's prefix cache is internal): every prompt token is input.
    return {"input_tokens": o.prompt_tokens, "output_tokens": o.completion_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def shell(message_id: str, model: str) -> dict[str, Any]:
    """The message before anything is known of it: the stream's ``message_start`` (its usage comes
    with ``message_delta``: the worker reports the prompt's tokens with the result)."""
    return {"id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0}}


def thinking_block(thought: str) -> dict[str, Any]:
    """A reasoning model's thought. The signature Anthropic adds (to check a thought sent back) has
    no meaning here: empty, and the history drops thoughts anyway."""
    return {"type": "thinking", "thinking": thought, "signature": ""}


def message(message_id: str, model: str, result: GenerateResult) -> dict[str, Any]:
    """The answer of a non-streamed ``POST /v1/messages``: a thinking block when the model reasoned,
    a text block when there is text, then one ``tool_use`` block per call (the worker keeps call
    markup out of the text)."""
    o = result.outputs[0]
    content: list[dict[str, Any]] = [thinking_block(o.reasoning)] if o.reasoning else []
    content += [{"type": "text", "text": o.text}] if o.text else []
    content += [tool_use_block(c, tool_input(c)) for c in o.tool_calls or ()]
    reason, sequence = stop_reason(o)
    return {**shell(message_id, model), "content": content, "stop_reason": reason, "stop_sequence": sequence,
            "usage": usage(o)}
