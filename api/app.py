"""The app factory: ``uvicorn api.app:create_app --factory``. Nothing is built at import time."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

import redis.asyncio as aioredis
from fastapi import FastAPI, Request

from tasks.celery_app import create_celery
from tasks.client import JobClient
from tasks.errors import JobError
from tasks.logging_setup import setup_logging
from tasks.settings import Settings, get_settings

from .errors import error_response, register_error_handlers
from .gateway import Gateway
from .routes import jobs, legacy, openai, system

log = logging.getLogger("llmhost.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    setup_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2,
                                         health_check_interval=30, max_connections=1024)
        celery = create_celery(settings)
        jobs = JobClient(client, celery, settings.job_ttl)
        await jobs.hub.start()
        app.state.gateway = Gateway(settings, client, jobs)
        log.info("LLM-Host API: models in %s, queue at %s", settings.models_dir, settings.redis_url)
        try:
            yield
        finally:
            await jobs.hub.stop()
            await client.aclose()

    app = FastAPI(title="LLM-Host", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible server for local Hugging Face models.")
    app.state.settings = settings
    register_error_handlers(app)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):  # type: ignore[no-untyped-def]
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_body_bytes:
            return error_response(JobError(f"Request body larger than {settings.max_body_bytes} bytes.",
                                           status_code=413, code="request_too_large"))
        return await call_next(request)

    for module in (openai, jobs, legacy, system):
        app.include_router(module.router)
    return app
