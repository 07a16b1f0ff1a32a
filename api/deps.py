"""Typed dependencies: the routes get what the app factory built (gateway, responses, queue client, metrics,
settings, files and batches)."""

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


def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def get_jobs(request: Request) -> JobClient:
    return request.app.state.jobs


def get_responses(request: Request) -> Responses:
    return request.app.state.responses


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_files(request: Request) -> Files:
    return request.app.state.files


def get_batches(request: Request) -> Batches:
    return request.app.state.batches


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
JobsDep = Annotated[JobClient, Depends(get_jobs)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ResponsesDep = Annotated[Responses, Depends(get_responses)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
FilesDep = Annotated[Files, Depends(get_files)]
BatchesDep = Annotated[Batches, Depends(get_batches)]
