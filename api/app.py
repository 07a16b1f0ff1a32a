"""The app factory: ``uvicorn api.app:create_app --factory``. Nothing is built at import time."""

from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

import redis.asyncio as aioredis
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from tasks.contract.celery_app import create_celery
from tasks.contract.logging_setup import setup_logging
from tasks.contract.settings import Settings, get_settings
from tasks.queue.batches import BatchStore
from tasks.queue.client import JobClient
from tasks.queue.files import FileStore
from tasks.queue.response_store import ResponseStore

from . import web
from .batches.driver import BatchDriver
from .batches.files import Files
from .batches.lines import LineJobs
from .batches.runner import BatchRunner
from .batches.service import Batches
from .errors import register_error_handlers
from .gateway import Gateway
from .metrics import Metrics
from .middleware import REQUEST_ID_HEADER, BodyLimitMiddleware, RequestContextMiddleware
from .responses_api.service import Responses
from .routes import anthropic, batches, files, jobs, legacy, openai, responses, system, tokenize, workers
from .routes import metrics as metrics_route
from .security import ApiKeyMiddleware, load_api_keys

log = logging.getLogger("llmhost.api")

MULTIPART_SLACK = 1024 * 1024  # an upload's body is its file plus the form's boundaries and fields


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    setup_logging(settings.log_level, settings.log_format, context={"service": "api"})
    api_keys = load_api_keys(settings)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2,
                                         health_check_interval=30, max_connections=1024)
        celery = create_celery(settings)
        jobs = JobClient(client, celery, settings.job_ttl)
        await jobs.hub.start()
        app.state.jobs = jobs
        app.state.gateway = gateway = Gateway(settings, client, jobs, metrics)
        file_store, batch_store = FileStore(client), BatchStore(client)
        runner = None
        if settings.batch_runner:
            driver = BatchDriver(batch_store, file_store, LineJobs(gateway), jobs, settings)
            runner = BatchRunner(batch_store, driver, settings.batch_lease_seconds)
            runner.start()
        app.state.files = Files(file_store, settings)
        app.state.batches = Batches(batch_store, file_store, settings, runner)
        app.state.responses = Responses(gateway, ResponseStore(client, settings.response_ttl,
                                                               settings.max_stored_responses))
        _freeze_heap()
        log.info("LLM-Host API: models in %s, queue at %s, %s, CORS %s", settings.models_dir, _redacted(settings.redis_url),
                 f"{len(api_keys)} API key(s)" if api_keys else "no API keys (open)",
                 ", ".join(settings.cors_origins) if settings.cors_origins else "off")
        try:
            yield
        finally:
            if runner is not None:
                await runner.stop()
            await jobs.hub.stop()
            await client.aclose()

    app = FastAPI(title="LLM-Host", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible server for local Hugging Face models (and the Anthropic Messages API).")
    app.state.settings = settings
    app.state.metrics = metrics
    register_error_handlers(app)

    # Added innermost first: request context (id, logs, metrics) → CORS → API keys → body limit → routes.
    # CORS sits outside the key check so that browsers' preflights (which carry no key) are answered.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       uploads={"/v1/files": settings.max_file_bytes + MULTIPART_SLACK})
    if api_keys:
        app.add_middleware(ApiKeyMiddleware, keys=api_keys)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=[REQUEST_ID_HEADER, "Retry-After"])
    app.add_middleware(RequestContextMiddleware, metrics=metrics)

    for module in (openai, responses, anthropic, tokenize, jobs, files, batches, workers, legacy, system, metrics_route,
                   web):
        app.include_router(module.router)
    return app


def _freeze_heap() -> None:
    """What start-up left (the app, pydantic's schemas, Celery, Redis' client: ~90,000 objects) stays
    out of the cyclic garbage collector, whose full collections walked all of it (23-31 ms here, with
    requests waiting)."""
    gc.collect()
    gc.freeze()


def _redacted(url: str) -> str:
    """A Redis URL without its password, for the log."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
