"""``GET /metrics``: the Prometheus text format, gauges read from Redis at scrape time."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..deps import BatchesDep, JobsDep, MetricsDep, SettingsDep

router = APIRouter(tags=["system"])


@router.get("/metrics", include_in_schema=False)
async def metrics(m: MetricsDep, jobs: JobsDep, settings: SettingsDep, batches: BatchesDep) -> Response:
    await m.refresh_gauges(jobs, settings.models_dir)
    await m.refresh_batches(batches.counts)
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)
