"""The front's one SSE encoder: translators yield frames as bytes, sse-starlette sends them.

A frame is ``event:`` (optional) and one ``data:`` line. The data is JSON (or ``[DONE]``), which
never holds a raw CR or LF (the encoder escapes them), so one line is the whole value and no
per-frame line splitting is needed.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Callable, Optional

from sse_starlette import EventSourceResponse, ServerSentEvent

from .json_body import dumps

PING_SECONDS = 15


def frame(data: str, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event is not None else ""
    return f"{head}data: {data}\n\n".encode()


def json_frame(obj: Any) -> bytes:
    """OpenAI's chunks: compact JSON, UTF-8 as is."""
    return b"data: " + dumps(obj) + b"\n\n"


DONE = frame("[DONE]")


def sse_response(frames: AsyncIterator[bytes], ping: Optional[Callable[[], ServerSentEvent]] = None) -> EventSourceResponse:
    """Keep-alive every ``PING_SECONDS`` while nothing else is sent: an SSE comment, or ``ping()``
    where the wire format has a ping event of its own (Anthropic's)."""
    return EventSourceResponse(frames, sep="\n", ping=PING_SECONDS, ping_message_factory=ping)
