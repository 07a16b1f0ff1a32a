"""The Anthropic Messages API: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

The ``anthropic-version`` and ``anthropic-beta`` headers are accepted and not needed; the key comes
as ``x-api-key`` or ``Authorization: Bearer`` (``api/security.py``); errors are in Anthropic's
envelope (``api/anthropic/errors.py``, chosen by path in ``api/errors.py``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ..anthropic.streaming import keepalive, message_events
from ..cancellation import unless_disconnected
from ..deps import GatewayDep
from ..schemas.anthropic import CountTokensRequest, MessagesRequest
from ..sse import sse_response

router = APIRouter(prefix="/v1", tags=["anthropic"])


@router.post("/messages")
async def messages(req: MessagesRequest, gw: GatewayDep, request: Request) -> Any:
    if not req.stream:
        return await unless_disconnected(request, gw.messages(req))
    return sse_response(message_events(await gw.stream_messages(req)), ping=keepalive)


@router.post("/messages/count_tokens")
async def count_tokens(req: CountTokensRequest, gw: GatewayDep, request: Request) -> Any:
    return await unless_disconnected(request, gw.count_message_tokens(req))
