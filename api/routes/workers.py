"""Workers: who serves what, and moving a worker to another model."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from ..deps import GatewayDep

router = APIRouter(prefix="/v1/workers", tags=["workers"])


class MoveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str


@router.get("")
async def list_workers(gw: GatewayDep) -> dict[str, Any]:
    return await gw.worker_list()


@router.post("/{name}/model", status_code=202)
async def move_worker(name: str, req: MoveRequest, gw: GatewayDep) -> JSONResponse:
    return JSONResponse(await gw.move_worker(name, req.model), status_code=202)
