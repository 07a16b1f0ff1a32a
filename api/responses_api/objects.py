"""The response object and its output items, built from a stored response and its job's result or
error. Item ids derive from the response id, so every reader (a poll, a stream, a resumed stream on
another process) names the same items the same way."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, TypeAdapter

from tasks.contract.errors import JobError
from tasks.contract.payloads import GenerateResult, Output, TokenLogprob, ToolCall

from ..schemas.response_items import Item

Status = Literal["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"]
FINAL: frozenset[str] = frozenset({"completed", "incomplete", "failed", "cancelled"})
_ITEMS = TypeAdapter(list[Item])


class StoredResponse(BaseModel):
    """What is kept of a response (``tasks.queue.response_store``)."""

    id: str
    created_at: int
    params: dict[str, Any]  # the request's parameters, as the object echoes them
    input_items: list[Item]  # everything the model saw before its output, earlier turns first
    job_id: Optional[str] = None  # background responses: their job (status, result, kept events)
    response: Optional[dict[str, Any]] = None  # the final object, once known

    def doc(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _suffix(response_id: str) -> str:
    return response_id.removeprefix("resp_")


def message_id(response_id: str) -> str:
    return f"msg_{_suffix(response_id)}"


def reasoning_item_id(response_id: str) -> str:
    return f"rs_{_suffix(response_id)}"


def reasoning_part(text: str) -> dict[str, Any]:
    return {"type": "reasoning_text", "text": text}


def reasoning_item(response_id: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    """A reasoning model's thought: its text as ``reasoning_text`` content (no summary is made)."""
    return {"id": reasoning_item_id(response_id), "type": "reasoning", "status": status, "summary": [],
            "content": content}


def call_item_id(response_id: str, index: int) -> str:
    return f"fc_{_suffix(response_id)}_{index}"


def logprobs(entries: Optional[list[TokenLogprob]]) -> list[dict[str, Any]]:
    return [{"token": e.token, "logprob": e.logprob if e.logprob is not None else 0.0, "bytes": e.bytes,
             "top_logprobs": [{"token": t, "logprob": v, "bytes": b} for t, v, b in e.top]} for e in entries or ()]


def text_part(text: str, entries: Optional[list[TokenLogprob]] = None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs(entries)}


def message_item(response_id: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": message_id(response_id), "type": "message", "status": status, "role": "assistant",
            "content": content}


def call_item(response_id: str, index: int, call: ToolCall, status: str = "completed",
              arguments: Optional[str] = None) -> dict[str, Any]:
    return {"id": call_item_id(response_id, index), "type": "function_call", "status": status, "call_id": call.id,
            "name": call.name, "arguments": call.arguments if arguments is None else arguments}


def has_message(out: Output) -> bool:
    """A message item unless the model only called functions."""
    return bool(out.text) or not out.tool_calls


def output_items(response_id: str, out: Output) -> list[dict[str, Any]]:
    """The thought (when the model reasoned), the message, the calls: in the order they were written."""
    items = [reasoning_item(response_id, "completed", [reasoning_part(out.reasoning)])] if out.reasoning else []
    if has_message(out):
        status = "incomplete" if out.finish_reason == "length" else "completed"
        items.append(message_item(response_id, status, [text_part(out.text, out.logprobs)]))
    items += [call_item(response_id, i, c) for i, c in enumerate(out.tool_calls or ())]
    return items


def usage(result: GenerateResult) -> dict[str, Any]:
    prompt, completion, reasoning = result.usage()
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0}, "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": reasoning}, "total_tokens": prompt + completion}


def response_object(stored: StoredResponse, status: Status, *, output: Optional[list[dict[str, Any]]] = None,
                    usage: Optional[dict[str, Any]] = None, error: Optional[dict[str, Any]] = None,
                    incomplete: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    return {"id": stored.id, "object": "response", "created_at": stored.created_at, "status": status,
            "error": error, "incomplete_details": incomplete, "output": output or [], "usage": usage,
            **stored.params}


def finished(stored: StoredResponse, result: GenerateResult) -> dict[str, Any]:
    """``completed``, or ``incomplete`` when the output ran out of tokens."""
    out = result.outputs[0]
    cut = out.finish_reason == "length"
    return response_object(stored, "incomplete" if cut else "completed", output=output_items(stored.id, out),
                           usage=usage(result), incomplete={"reason": "max_output_tokens"} if cut else None)


def ended_with(stored: StoredResponse, error: JobError) -> dict[str, Any]:
    """``cancelled``, or ``failed`` with the error."""
    if error.code == "cancelled":
        return response_object(stored, "cancelled")
    return response_object(stored, "failed", error={"code": error.code or error.type, "message": error.message})


def conversation(stored: StoredResponse, final: dict[str, Any]) -> list[Item]:
    """The items a follow-up (``previous_response_id``) continues from: this response's input,
    then its output (messages and function calls)."""
    return [*stored.input_items, *_ITEMS.validate_python(final.get("output") or [])]
