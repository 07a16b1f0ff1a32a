"""One streaming contract for chat and text completions, encoded as SSE ``data:`` lines.

Chat: a role chunk first; content deltas; one final chunk per choice carrying ``finish_reason``;
a usage chunk with empty ``choices`` when ``stream_options.include_usage``; ``[DONE]`` always last.
A failure after the 200 becomes an error event, then ``[DONE]``. Leaving early (the client went
away) cancels the job, through :class:`tasks.client.JobWatch`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, AsyncIterator

from tasks.contract.errors import JobError
from tasks.contract.payloads import GenerateResult, TokenLogprob, ToolCall

from .gateway import Submitted
from .responses import chat_logprobs, completion_logprobs, totals


@dataclass
class StreamShape:
    """What differs between the chat and text completion chunk formats."""

    object: str  # "chat.completion.chunk" | "text_completion"
    chat: bool
    include_usage: bool
    choices: int = 1  # choice indices 0 .. choices-1 (prompts × n)
    echo: list[str] | None = None  # completions with echo: the prompt of each choice, sent first

    def choice(self, index: int, text: str | None, finish_reason: str | None, first: bool = False,
               logprobs: list[TokenLogprob] | None = None) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            return {"index": index, "delta": delta, "logprobs": chat_logprobs(logprobs), "finish_reason": finish_reason}
        return {"index": index, "text": text or "", "logprobs": completion_logprobs(logprobs),
                "finish_reason": finish_reason}

    def opening(self) -> list[dict[str, Any]]:
        """Per choice, before any token: the role (chat) or the echoed prompt (completions)."""
        if self.chat:
            return [self.choice(i, "", None, first=True) for i in range(self.choices)]
        if self.echo:
            return [self.choice(i, self.echo[i], None) for i in range(self.choices)]
        return []


def tool_call_deltas(calls: list[ToolCall] | None) -> list[dict[str, Any]]:
    """OpenAI's streamed shape of ``tool_calls``: per call, its id and name with empty arguments,
    then the arguments; a client concatenating them gets the non-streamed ``message.tool_calls``."""
    pieces: list[dict[str, Any]] = []
    for i, c in enumerate(calls or ()):
        pieces.append({"index": i, "id": c.id, "type": "function", "function": {"name": c.name, "arguments": ""}})
        pieces.append({"index": i, "function": {"arguments": c.arguments}})
    return pieces


def _data(obj: Any) -> dict[str, str]:
    return {"data": json.dumps(obj, separators=(",", ":"), ensure_ascii=False)}


async def stream_events(sub: Submitted, shape: StreamShape) -> AsyncIterator[dict[str, str]]:
    base = {"id": sub.job_id, "object": shape.object, "created": sub.created, "model": sub.model}

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, str]:
        return _data({**base, "choices": choices, **extra})

    tracker = sub.tracker
    # What each choice has shown so far: deltas are fire-and-forget on pub/sub, so text lost on the
    # way (a Redis blip) is sent from the final result rather than silently missing.
    sent: dict[int, str] = {i: text for i, text in enumerate(shape.echo or [])}
    async with sub.watch as watch:
        try:
            for opening in shape.opening():
                yield chunk([opening])
            while True:
                event = await watch.next()
                if event.type == "delta":
                    tracker.delta(event.index)
                    sent[event.index] = sent.get(event.index, "") + event.text
                    yield chunk([shape.choice(event.index, event.text, None, logprobs=event.logprobs)])
                elif event.type == "done":
                    tracker.succeeded(event.result)
                    result = GenerateResult.model_validate(event.result or {})
                    for o in result.outputs:
                        shown = sent.get(o.index, "")
                        if len(o.text) > len(shown) and o.text.startswith(shown):
                            yield chunk([shape.choice(o.index, o.text[len(shown):], None)])
                        for piece in tool_call_deltas(o.tool_calls) if shape.chat else ():
                            yield chunk([{"index": o.index, "delta": {"tool_calls": [piece]}, "logprobs": None,
                                          "finish_reason": None}])
                        yield chunk([shape.choice(o.index, None if shape.chat else "", o.finish_reason)])
                    if shape.include_usage:
                        yield chunk([], usage=totals(result))
                    break
                elif event.type == "error":
                    err = JobError.from_dict(event.error or {})
                    tracker.failed(err)
                    yield _data(err.envelope())
                    break
        except JobError as e:  # timeout or lost worker while streaming
            tracker.failed(e)
            yield _data(e.envelope())
        finally:
            tracker.cancelled()  # the client went away (no-op when the job already has an outcome)
        yield {"data": "[DONE]"}
