"""Background jobs: submit an endpoint's body, poll it, cancel it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..deps import GatewayDep
from ..schemas.jobs import JobRequest

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post("", status_code=202)
async def submit_job(req: JobRequest, gw: GatewayDep) -> JSONResponse:
    view = await gw.submit_async(req.endpoint, req.parsed_body())
    return JSONResponse(view, status_code=202)


@router.get("/{job_id}")
async def get_job(job_id: str, gw: GatewayDep) -> dict[str, Any]:
    return await gw.job_view(job_id)


@router.delete("/{job_id}")
async def cancel_job(job_id: str, gw: GatewayDep) -> dict[str, Any]:
    return await gw.cancel_job(job_id)
