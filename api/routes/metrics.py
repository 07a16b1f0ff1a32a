"""``GET /metrics``: the Prometheus text format, gauges read from Redis at scrape time."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..deps import JobsDep, MetricsDep, SettingsDep

router = APIRouter(tags=["system"])


@router.get("/metrics", include_in_schema=False)
async def metrics(m: MetricsDep, jobs: JobsDep, settings: SettingsDep) -> Response:
    await m.refresh_gauges(jobs, settings.models_dir)
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)
