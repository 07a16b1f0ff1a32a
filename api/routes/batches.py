"""``/v1/batches``: create a batch from an uploaded file, poll it, list them, cancel one."""

from __future__ import annotations

from typing import Any, Optional

from fastapi import APIRouter, Query

from ..deps import BatchesDep
from ..schemas.batches import BatchCreateRequest

router = APIRouter(prefix="/v1/batches", tags=["batches"])


@router.post("")
async def create_batch(req: BatchCreateRequest, batches: BatchesDep) -> dict[str, Any]:
    return await batches.create(req)


@router.get("")
async def list_batches(batches: BatchesDep, limit: int = Query(20, ge=1, le=100),
                       after: Optional[str] = None) -> dict[str, Any]:
    return await batches.page(limit, after)


@router.get("/{batch_id}")
async def get_batch(batch_id: str, batches: BatchesDep) -> dict[str, Any]:
    return await batches.get(batch_id)


@router.post("/{batch_id}/cancel")
async def cancel_batch(batch_id: str, batches: BatchesDep) -> dict[str, Any]:
    return await batches.cancel(batch_id)
