"""Typed dependencies: the routes get the gateway and settings built by the app factory."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from tasks.contract.settings import Settings

from .gateway import Gateway


def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
