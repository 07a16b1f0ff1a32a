"""A client that goes away cancels its work (after vLLM's ``with_cancellation``).

FastAPI does not cancel a handler when its client disconnects: a synchronous chat would keep the
worker generating for nobody. Here the handler races the ASGI ``http.disconnect`` message; if the
client leaves first, the handler is cancelled, and its job watcher's cleanup cancels the job on the
worker (across Redis) in a ``finally``. Streams get the same from sse-starlette, which cancels the
generator on disconnect.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

from fastapi import Request
from fastapi.responses import Response

from .json_body import JSONBody

T = TypeVar("T")

CLIENT_CLOSED = 499  # nginx's code for "client closed request"; nobody reads it


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | Response:
    """Await ``work`` in this task (its context variables, e.g. the bound job id, stay visible to
    the middleware); a watcher task cancels this task if the client leaves first. A body (a dict or
    a list) is answered as :class:`JSONBody`."""
    me = asyncio.current_task()
    assert me is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _disconnected(request)
        gone = True
        me.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        result = await work
        return JSONBody(result) if isinstance(result, (dict, list)) else result
    except asyncio.CancelledError:
        if not gone:
            raise
        me.uncancel()  # the cancel was ours: answer (nobody reads it) instead of propagating
        return Response(status_code=CLIENT_CLOSED)
    finally:
        watcher.cancel()
