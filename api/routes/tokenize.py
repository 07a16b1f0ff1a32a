"""Model-aware tokenization on the model's own worker (the front has no tokenizer)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ..deps import GatewayDep
from ..schemas.tokenize import DetokenizeRequest, TokenizeRequest

router = APIRouter(tags=["tokenize"])


@router.post("/tokenize")
async def tokenize(req: TokenizeRequest, gw: GatewayDep) -> dict[str, Any]:
    return await gw.tokenize(req)


@router.post("/detokenize")
async def detokenize(req: DetokenizeRequest, gw: GatewayDep) -> dict[str, Any]:
    return await gw.tokenize(req)
