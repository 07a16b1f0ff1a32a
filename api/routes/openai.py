"""The OpenAI endpoints: chat, completions, embeddings, models."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ..cancellation import unless_disconnected
from ..deps import GatewayDep
from ..schemas.chat import ChatCompletionRequest
from ..schemas.completions import CompletionRequest
from ..schemas.embeddings import EmbeddingRequest
from ..sse import sse_response
from ..streaming import StreamShape, stream_events

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post("/chat/completions")
async def chat_completions(req: ChatCompletionRequest, gw: GatewayDep, request: Request) -> Any:
    if not req.stream:
        return await unless_disconnected(request, gw.chat(req))
    sub = await gw.stream_chat(req)
    shape = StreamShape("chat.completion.chunk", chat=True, include_usage=req.include_usage, choices=req.n)
    return sse_response(stream_events(sub, shape))


@router.post("/completions")
async def completions(req: CompletionRequest, gw: GatewayDep, request: Request) -> Any:
    if not req.stream:
        return await unless_disconnected(request, gw.completion(req))
    sub = await gw.stream_completion(req)
    prompts = [p for p in req.prompts() for _ in range(req.n)]
    shape = StreamShape("text_completion", chat=False, include_usage=req.include_usage, choices=len(prompts),
                        echo=prompts if req.echo else None)
    return sse_response(stream_events(sub, shape))


@router.post("/embeddings")
async def embeddings(req: EmbeddingRequest, gw: GatewayDep, request: Request) -> Any:
    return await unless_disconnected(request, gw.embeddings(req))


@router.get("/models")
async def list_models(gw: GatewayDep) -> dict[str, Any]:
    return {"object": "list", "data": await gw.model_cards()}


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, gw: GatewayDep) -> dict[str, Any]:
    return await gw.model_card(model_id)
