"""Prometheus metrics of the front, all named ``llmhost_*``, served at ``GET /metrics``.

Each app has its own :class:`~prometheus_client.CollectorRegistry` (several apps in one process do
not collide). Counters and histograms are updated as requests and jobs go by; the worker and queue
gauges are read from Redis at scrape time (worker heartbeats and the Celery queue lists).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Optional

import redis
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tasks.contract.catalog import list_models
from tasks.contract.errors import JobError
from tasks.queue.presence import queue_depths

from .middleware import request_started

if TYPE_CHECKING:
    from .gateway import Gateway

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5)
WORKER_STATES = ("loading", "ready", "failed")


def outcome_of(err: JobError) -> str:
    """succeeded / failed / cancelled / timeout, from the error that ended a job."""
    if err.code == "request_timeout" or err.type == "timeout_error":
        return "timeout"
    if err.code == "cancelled" or err.type == "cancelled":
        return "cancelled"
    return "failed"


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("llmhost_requests", "HTTP requests answered, by route template, method and status.",
                                ["route", "method", "status"], registry=r)
        self.request_duration = Histogram("llmhost_request_duration_seconds",
                                          "Time from request to the end of the response (streams: the last event).",
                                          ["route", "method"], buckets=DURATION_BUCKETS, registry=r)
        self.ttft = Histogram("llmhost_time_to_first_token_seconds",
                              "Streams: time from the request to the first relayed text delta.",
                              ["model"], buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("llmhost_inter_token_latency_seconds",
                             "Streams: time between two relayed text deltas of one choice.",
                             ["model"], buckets=ITL_BUCKETS, registry=r)
        self.prompt_tokens = Counter("llmhost_prompt_tokens", "Prompt tokens of finished jobs (generations and embeddings).",
                                     ["model"], registry=r)
        self.generation_tokens = Counter("llmhost_generation_tokens", "Generated tokens of finished generations.",
                                         ["model"], registry=r)
        self.job_outcomes = Counter("llmhost_job_outcomes", "Jobs the API waited for, by how they ended.",
                                    ["endpoint", "outcome"], registry=r)
        self.workers = Gauge("llmhost_workers", "Live workers (heartbeat not expired) by model and state.",
                             ["model", "state"], registry=r)
        self.running = Gauge("llmhost_running_sequences", "Sequences being decoded by the model's workers.",
                             ["model"], registry=r)
        self.waiting = Gauge("llmhost_waiting_sequences", "Sequences taken by a worker and waiting for a batch slot.",
                             ["model"], registry=r)
        self.queue_depth = Gauge("llmhost_queue_depth", "Jobs in the model's queue not yet taken by a worker.",
                                 ["model"], registry=r)
        self.redis_up = Gauge("llmhost_redis_up", "1 when Redis answered the last scrape.", registry=r)

    def track(self, endpoint: str, model: str) -> "JobTracker":
        return JobTracker(self, endpoint, model)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.request_duration.labels(route, method).observe(seconds)

    async def refresh_gauges(self, gw: "Gateway") -> None:
        """Read worker presence and queue lengths from Redis; on failure the gauges are left empty."""
        try:
            workers = await gw.workers(fresh=True)
            models = sorted({m.id for m in await asyncio.to_thread(list_models, gw.settings.models_dir)}
                            | {w.model for w in workers if w.model})
            depths = await queue_depths(gw.redis, models)
        except redis.RedisError:
            workers, models, depths, up = [], [], {}, 0
        else:
            up = 1
        # No await from here to the end: a concurrent scrape cannot interleave with this rewrite.
        for g in (self.workers, self.running, self.waiting, self.queue_depth):
            g.clear()
        self.redis_up.set(up)
        for m in models:
            mine = [w for w in workers if w.model == m]
            waiting = sum(depths.get(m, {}).values())
            if not mine and not waiting:
                continue  # a folder nobody serves and nothing waits for: no series
            for state in WORKER_STATES:
                self.workers.labels(m, state).set(sum(w.state == state for w in mine))
            self.running.labels(m).set(sum(w.running for w in mine))
            self.waiting.labels(m).set(sum(w.waiting for w in mine))
            self.queue_depth.labels(m).set(waiting)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class JobTracker:
    """The metrics of one job the API waits for: stream latencies, token counts, one outcome."""

    def __init__(self, metrics: Metrics, endpoint: str, model: str) -> None:
        self.m = metrics
        self.endpoint = endpoint
        self.model = model
        self.started = request_started() or time.perf_counter()
        self._last: dict[int, float] = {}
        self._first = True
        self.outcome: Optional[str] = None

    def delta(self, index: int) -> None:
        now = time.perf_counter()
        if self._first:
            self._first = False
            self.m.ttft.labels(self.model).observe(now - self.started)
        elif index in self._last:
            self.m.itl.labels(self.model).observe(now - self._last[index])
        self._last[index] = now

    def _end(self, outcome: str) -> bool:
        if self.outcome is not None:
            return False
        self.outcome = outcome
        self.m.job_outcomes.labels(self.endpoint, outcome).inc()
        return True

    def succeeded(self, result: Optional[dict[str, Any]]) -> None:
        if not self._end("succeeded") or not result:
            return
        if "outputs" in result:  # a generation: one prompt per distinct index
            outputs = result["outputs"]
            prompt = sum({o.get("index", 0): o.get("prompt_tokens", 0) for o in outputs}.values())
            self.m.prompt_tokens.labels(self.model).inc(prompt)
            self.m.generation_tokens.labels(self.model).inc(sum(o.get("completion_tokens", 0) for o in outputs))
        elif "prompt_tokens" in result:  # embeddings
            self.m.prompt_tokens.labels(self.model).inc(result["prompt_tokens"])

    def failed(self, err: JobError) -> None:
        self._end(outcome_of(err))

    def cancelled(self) -> None:
        """The client went away before the end (the job is cancelled on its way out)."""
        self._end("cancelled")


router = APIRouter(tags=["system"])


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    m: Metrics = request.app.state.metrics
    await m.refresh_gauges(request.app.state.gateway)
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)
