"""Anthropic's streaming contract: a job's typed events as named SSE events.

``message_start`` (the message without content; usage follows in ``message_delta``, since the worker
reports the prompt's tokens with its result), a ``ping``, then per content block
``content_block_start``, ``content_block_delta``\\* and ``content_block_stop`` (a reasoning model's
thought first, as a ``thinking`` block of ``thinking_delta``\\s and a ``signature_delta``; text next
when there is any, then one ``tool_use`` block per call, its ``input`` as one ``input_json_delta``: the worker
parses calls at the end), then ``message_delta`` (``stop_reason``, ``stop_sequence``, ``usage``) and
``message_stop``. A job still queued when the stream opened is waited for after the ping; further
pings come every :data:`api.sse.PING_SECONDS` while nothing else is sent. A failure after the 200 is
an ``error`` event, which ends the stream (the SDK raises it). Leaving early cancels the job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator, assert_never

from sse_starlette import ServerSentEvent

from tasks.contract.errors import JobError
from tasks.contract.payloads import GenerateResult, Output
from tasks.queue.events import Failed, Finished, ReasoningDelta, TextDelta

from ..gateway import Submitted
from ..json_body import dumps
from ..streaming import Shown
from .errors import envelope
from .messages import shell, stop_reason, thinking_block, tool_input, tool_use_block, usage


def _json(body: dict[str, Any]) -> str:
    return dumps(body).decode()


def event(kind: str, **body: Any) -> bytes:
    """One event: its name, and the same name as the data's ``type``."""
    return b"event: " + kind.encode() + b"\ndata: " + dumps({"type": kind, **body}) + b"\n\n"


PING = event("ping")


def keepalive() -> ServerSentEvent:
    """The periodic ping (sse-starlette's keep-alive), the same event as :data:`PING`."""
    return ServerSentEvent(_json({"type": "ping"}), event="ping", sep="\n")


def error_event(err: JobError) -> bytes:
    return event("error", error=envelope(err)["error"])


@dataclass
class Blocks:
    """The content blocks sent so far: the open thinking or text block, if any, and the next block's
    index."""

    index: int = 0
    text_open: bool = False
    thought_open: bool = False
    shown: Shown = field(default_factory=Shown)

    def thought(self, text: str) -> Iterator[bytes]:
        if not text:
            return
        if not self.thought_open:
            self.thought_open = True
            yield event("content_block_start", index=self.index, content_block=thinking_block(""))
        self.shown.thought.append(text)
        yield event("content_block_delta", index=self.index, delta={"type": "thinking_delta", "thinking": text})

    def close_thought(self) -> Iterator[bytes]:
        if self.thought_open:
            self.thought_open = False
            yield event("content_block_delta", index=self.index, delta={"type": "signature_delta", "signature": ""})
            yield event("content_block_stop", index=self.index)
            self.index += 1

    def text(self, text: str) -> Iterator[bytes]:
        if not text:
            return
        yield from self.close_thought()
        if not self.text_open:
            self.text_open = True
            yield event("content_block_start", index=self.index, content_block={"type": "text", "text": ""})
        self.shown.pieces.append(text)
        yield event("content_block_delta", index=self.index, delta={"type": "text_delta", "text": text})

    def close_text(self) -> Iterator[bytes]:
        if self.text_open:
            self.text_open = False
            yield event("content_block_stop", index=self.index)
            self.index += 1

    def finish(self, o: Output) -> Iterator[bytes]:
        """After the last delta: what was lost on the way, the tool calls, the stop reason and usage."""
        if not self.text_open:  # a thought comes before the text, never after
            yield from self.thought(self.shown.missing(o.reasoning or "", thought=True))
        yield from self.close_thought()
        yield from self.text(self.shown.missing(o.text))
        yield from self.close_text()
        for call in o.tool_calls or ():
            yield event("content_block_start", index=self.index, content_block=tool_use_block(call, {}))
            yield event("content_block_delta", index=self.index,
                        delta={"type": "input_json_delta", "partial_json": _json(tool_input(call))})
            yield event("content_block_stop", index=self.index)
            self.index += 1
        reason, sequence = stop_reason(o)
        yield event("message_delta", delta={"stop_reason": reason, "stop_sequence": sequence}, usage=usage(o))
        yield event("message_stop")


async def message_events(sub: Submitted[GenerateResult]) -> AsyncIterator[bytes]:
    async with sub.watch as events:
        try:
            yield event("message_start", message=shell(sub.job_id, sub.model))
            yield PING
            if sub.accepting is not None:  # still queued when the stream opened
                try:
                    await sub.accepting
                except JobError as e:
                    yield error_event(e)
                    return
            blocks = Blocks()
            async for ev in events:
                match ev:
                    case TextDelta(text=text):
                        for frame in blocks.text(text):
                            yield frame
                    case ReasoningDelta(text=text):
                        for frame in blocks.thought(text):
                            yield frame
                    case Finished(result):
                        for frame in blocks.finish(result.outputs[0]):
                            yield frame
                    case Failed(error):
                        yield error_event(error)
                    case _:
                        assert_never(ev)
        finally:
            if sub.accepting is not None:
                sub.accepting.cancel()  # the client left while it waited: the job is cancelled too
