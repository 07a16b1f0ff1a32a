"""The OpenAI endpoints: chat, completions, embeddings, models."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sse_starlette import EventSourceResponse

from ..deps import GatewayDep
from ..schemas.chat import ChatCompletionRequest
from ..schemas.completions import CompletionRequest
from ..schemas.embeddings import EmbeddingRequest
from ..streaming import StreamShape, stream_events

router = APIRouter(prefix="/v1", tags=["openai"])


def sse(events: Any) -> EventSourceResponse:
    return EventSourceResponse(events, sep="\n", ping=15)


@router.post("/chat/completions")
async def chat_completions(req: ChatCompletionRequest, gw: GatewayDep) -> Any:
    if not req.stream:
        return await gw.chat(req)
    sub = await gw.stream_chat(req)
    return sse(stream_events(sub, StreamShape("chat.completion.chunk", chat=True, include_usage=req.include_usage)))


@router.post("/completions")
async def completions(req: CompletionRequest, gw: GatewayDep) -> Any:
    if not req.stream:
        return await gw.completion(req)
    sub = await gw.stream_completion(req)
    return sse(stream_events(sub, StreamShape("text_completion", chat=False, include_usage=req.include_usage)))


@router.post("/embeddings")
async def embeddings(req: EmbeddingRequest, gw: GatewayDep) -> dict[str, Any]:
    return await gw.embeddings(req)


@router.get("/models")
async def list_models(gw: GatewayDep) -> dict[str, Any]:
    return {"object": "list", "data": await gw.model_cards()}


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, gw: GatewayDep) -> dict[str, Any]:
    return await gw.model_card(model_id)
