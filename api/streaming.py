"""OpenAI's streaming contract for chat and text completions: a job's typed events as SSE.

Chat: a role chunk first; content deltas (a reasoning model's thought as ``reasoning_content``
deltas, never in ``content``); one final chunk per choice carrying ``finish_reason``;
a usage chunk with empty ``choices`` when ``stream_options.include_usage``; ``[DONE]`` always last.
A failure after the 200 becomes an error event, then ``[DONE]``. Leaving early (the client went
away) cancels the job, through :class:`tasks.queue.client.JobWatch`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator, assert_never

from tasks.contract.payloads import GenerateResult, TokenLogprob, ToolCall
from tasks.queue.events import Failed, Finished, ReasoningDelta, TextDelta

from .gateway import Submitted
from .responses import chat_logprobs, completion_logprobs, totals
from .sse import DONE, json_frame


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

    def thought(self, index: int, text: str, logprobs: list[TokenLogprob] | None = None) -> dict[str, Any]:
        """A chat chunk's choice carrying reasoning text (``delta.reasoning_content``)."""
        return {"index": index, "delta": {"reasoning_content": text}, "logprobs": chat_logprobs(logprobs),
                "finish_reason": None}

    def opening(self) -> list[dict[str, Any]]:
        """Per choice, before any token: the role (chat) or the echoed prompt (completions)."""
        if self.chat:
            return [self.choice(i, "", None, first=True) for i in range(self.choices)]
        if self.echo:
            return [self.choice(i, self.echo[i], None) for i in range(self.choices)]
        return []


@dataclass
class Shown:
    """What one choice has shown so far. Deltas are fire-and-forget on pub/sub, so text lost on
    the way (a Redis blip) is sent from the final result rather than silently missing."""

    pieces: list[str] = field(default_factory=list)  # joined once, at the end
    thought: list[str] = field(default_factory=list)  # reasoning, likewise

    def missing(self, final: str, thought: bool = False) -> str:
        shown = "".join(self.thought if thought else self.pieces)
        return final[len(shown):] if len(final) > len(shown) and final.startswith(shown) else ""


def tool_call_deltas(calls: list[ToolCall] | None) -> list[dict[str, Any]]:
    """OpenAI's streamed shape of ``tool_calls``: per call, its id and name with empty arguments,
    then the arguments; a client concatenating them gets the non-streamed ``message.tool_calls``."""
    pieces: list[dict[str, Any]] = []
    for i, c in enumerate(calls or ()):
        pieces.append({"index": i, "id": c.id, "type": "function", "function": {"name": c.name, "arguments": ""}})
        pieces.append({"index": i, "function": {"arguments": c.arguments}})
    return pieces


def closing(result: GenerateResult, shape: StreamShape, shown: dict[int, Shown]) -> Iterator[dict[str, Any]]:
    """The chunks' bodies after the last delta: per choice the missing text, its tool calls and its
    one ``finish_reason``; then the usage."""
    for o in result.outputs:
        if shape.chat and (rest := shown.get(o.index, Shown()).missing(o.reasoning or "", thought=True)):
            yield {"choices": [shape.thought(o.index, rest)]}
        if rest := shown.get(o.index, Shown()).missing(o.text):
            yield {"choices": [shape.choice(o.index, rest, None)]}
        for piece in tool_call_deltas(o.tool_calls) if shape.chat else ():
            yield {"choices": [{"index": o.index, "delta": {"tool_calls": [piece]}, "logprobs": None,
                                "finish_reason": None}]}
        yield {"choices": [shape.choice(o.index, None if shape.chat else "", o.finish_reason)]}
    if shape.include_usage:
        yield {"choices": [], "usage": totals(result)}


async def stream_events(sub: Submitted[GenerateResult], shape: StreamShape) -> AsyncIterator[bytes]:
    base = {"id": sub.job_id, "object": shape.object, "created": sub.created, "model": sub.model}
    shown = {i: Shown([text]) for i, text in enumerate(shape.echo or [])}
    async with sub.watch as events:
        for opening in shape.opening():
            yield json_frame({**base, "choices": [opening]})
        async for event in events:
            match event:
                case TextDelta(index, text, logprobs):
                    shown.setdefault(index, Shown()).pieces.append(text)
                    yield json_frame({**base, "choices": [shape.choice(index, text, None, logprobs=logprobs)]})
                case ReasoningDelta(index, text, logprobs):
                    shown.setdefault(index, Shown()).thought.append(text)
                    if shape.chat:  # text completions have no place for it (they never reason)
                        yield json_frame({**base, "choices": [shape.thought(index, text, logprobs)]})
                case Finished(result):
                    for body in closing(result, shape, shown):
                        yield json_frame({**base, **body})
                case Failed(error):
                    yield json_frame(error.envelope())
                case _:
                    assert_never(event)
    yield DONE
