"""The OpenAI Responses API: create, read (or stream again), cancel, delete, list input items."""

from __future__ import annotations

from typing import Any, Literal, Optional

from fastapi import APIRouter, Query, Request

from ..cancellation import unless_disconnected
from ..deps import ResponsesDep
from ..schemas.responses import ResponseRequest
from ..sse import sse_response

router = APIRouter(prefix="/v1/responses", tags=["responses"])


@router.post("")
async def create_response(req: ResponseRequest, responses: ResponsesDep, request: Request) -> Any:
    if req.background:
        created = await responses.create_background(req)
        return sse_response(await responses.replay(created["id"])) if req.stream else created
    if req.stream:
        return sse_response(await responses.stream(req))
    return await unless_disconnected(request, responses.create(req))


@router.get("/{response_id}")
async def get_response(response_id: str, responses: ResponsesDep, stream: bool = False,
                       starting_after: Optional[int] = Query(None, ge=0)) -> Any:
    if stream:
        return sse_response(await responses.replay(response_id, -1 if starting_after is None else starting_after))
    return await responses.view(response_id)


@router.delete("/{response_id}")
async def delete_response(response_id: str, responses: ResponsesDep) -> dict[str, Any]:
    return await responses.delete(response_id)


@router.post("/{response_id}/cancel")
async def cancel_response(response_id: str, responses: ResponsesDep) -> dict[str, Any]:
    return await responses.cancel(response_id)


@router.get("/{response_id}/input_items")
async def list_input_items(response_id: str, responses: ResponsesDep, limit: int = Query(20, ge=1, le=100),
                           after: Optional[str] = None, order: Literal["asc", "desc"] = "desc") -> dict[str, Any]:
    return await responses.input_items(response_id, limit, after, order)
