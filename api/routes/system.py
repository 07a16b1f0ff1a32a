"""Health, readiness, and the OpenAI routes this server does not implement (501)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from tasks.contract.errors import JobError

from ..deps import GatewayDep

router = APIRouter(tags=["system"])


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(gw: GatewayDep) -> JSONResponse:
    ok, info = await gw.ready()
    return JSONResponse({"status": "ready" if ok else "not_ready", **info}, status_code=200 if ok else 503)


_NOT_HERE = ("audio", "fine_tuning")


def _not_implemented(area: str) -> Any:
    async def handler(rest: str = "") -> JSONResponse:
        raise JobError(f"/v1/{area} is not implemented by LLM-Host.", status_code=501, type="not_implemented",
                       code="not_implemented")
    return handler


for _area in _NOT_HERE:
    for _path in (f"/v1/{_area}", f"/v1/{_area}/{{rest:path}}"):
        router.add_api_route(_path, _not_implemented(_area), methods=["GET", "POST", "DELETE", "PUT", "PATCH"],
                             include_in_schema=False)
