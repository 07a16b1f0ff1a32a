"""Typed dependencies: the routes get what the app factory built (gateway, responses, queue client, metrics,
settings, files and batches). ``async``: FastAPI runs a plain ``def`` dependency in its thread pool,
a thread hop on every request for an attribute read."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from tasks.contract.settings import Settings
from tasks.queue.client import JobClient

from .batches.files import Files
from .batches.service import Batches
from .gateway import Gateway
from .metrics import Metrics
from .responses_api.service import Responses


async def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


async def get_jobs(request: Request) -> JobClient:
    return request.app.state.jobs


async def get_responses(request: Request) -> Responses:
    return request.app.state.responses


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_files(request: Request) -> Files:
    return request.app.state.files


async def get_batches(request: Request) -> Batches:
    return request.app.state.batches


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
JobsDep = Annotated[JobClient, Depends(get_jobs)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ResponsesDep = Annotated[Responses, Depends(get_responses)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
FilesDep = Annotated[Files, Depends(get_files)]
BatchesDep = Annotated[Batches, Depends(get_batches)]
