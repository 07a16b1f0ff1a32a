"""The front's one SSE encoder: translators yield frames as bytes, sse-starlette sends them.

A frame is ``event:`` (optional) and one ``data:`` line. The data is JSON (or ``[DONE]``), which
never holds a raw CR or LF (``json.dumps`` escapes them), so one line is the whole value and no
per-frame line splitting is needed.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

from sse_starlette import EventSourceResponse

PING_SECONDS = 15


def frame(data: str, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event is not None else ""
    return f"{head}data: {data}\n\n".encode()


def json_frame(obj: Any) -> bytes:
    """OpenAI's chunks: compact JSON, UTF-8 as is."""
    return frame(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))


DONE = frame("[DONE]")


def sse_response(frames: AsyncIterator[bytes]) -> EventSourceResponse:
    return EventSourceResponse(frames, sep="\n", ping=PING_SECONDS)
