"""Prometheus metrics of the front, all named ``llmhost_*`` (served by ``api/routes/metrics.py``).

Each app has its own :class:`~prometheus_client.CollectorRegistry` (several apps in one process do
not collide). Counters and histograms are updated as requests and jobs go by; the worker and queue
gauges are read from Redis at scrape time (worker heartbeats and the Celery queue lists).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Awaitable, Callable, Optional

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tasks.contract.catalog import list_models
from tasks.contract.errors import JobError
from tasks.contract.payloads import EmbedResult, GenerateResult
from tasks.queue.client import JobClient
from tasks.queue.events import Result
from tasks.queue.presence import queue_depths

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5)
WORKER_STATES = ("loading", "ready", "failed")
BATCH_STATUSES = ("validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling",
                  "cancelled")


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
        self.batches = Gauge("llmhost_batches", "Batches (/v1/batches) by status.", ["status"], registry=r)

    def track(self, endpoint: str, model: str, started: Optional[float] = None) -> "JobTracker":
        """The tracker of one job; ``started`` (``time.perf_counter()``) is when its request arrived."""
        return JobTracker(self, endpoint, model, started)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.request_duration.labels(route, method).observe(seconds)

    async def refresh_gauges(self, jobs: JobClient, models_dir: Path) -> None:
        """Read worker presence and queue lengths from Redis; on failure the gauges are left empty."""
        try:
            workers = await jobs.workers(fresh=True)
            models = sorted({m.id for m in await asyncio.to_thread(list_models, models_dir)}
                            | {w.model for w in workers if w.model})
            depths = await queue_depths(jobs.redis, models)
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

    async def refresh_batches(self, counts: Callable[[], Awaitable[dict[str, int]]]) -> None:
        """Batches per status, every status always present; left empty when Redis does not answer."""
        try:
            found = await counts()
        except redis.RedisError:
            self.batches.clear()
            return
        for status in BATCH_STATUSES:
            self.batches.labels(status).set(max(0, found.get(status, 0)))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class JobTracker:
    """The metrics of one job the API waits for: stream latencies, token counts, one outcome.
    A :class:`tasks.queue.events.JobObserver`: the job's watch tells it what happened."""

    def __init__(self, metrics: Metrics, endpoint: str, model: str, started: Optional[float] = None) -> None:
        self.m = metrics
        self.endpoint = endpoint
        self.model = model
        self.started = started or time.perf_counter()
        self._itl: Optional[Histogram] = None  # its labelled child, looked up once rather than per token
        self._last: dict[int, float] = {}
        self._first = True
        self.outcome: Optional[str] = None

    def delta(self, index: int) -> None:
        now = time.perf_counter()
        if self._first:
            self._first = False
            self.m.ttft.labels(self.model).observe(now - self.started)
        elif index in self._last:
            if self._itl is None:
                self._itl = self.m.itl.labels(self.model)
            self._itl.observe(now - self._last[index])
        self._last[index] = now

    def _end(self, outcome: str) -> bool:
        if self.outcome is not None:
            return False
        self.outcome = outcome
        self.m.job_outcomes.labels(self.endpoint, outcome).inc()
        return True

    def succeeded(self, result: Result) -> None:
        if not self._end("succeeded") or not isinstance(result, (GenerateResult, EmbedResult)):
            return
        usage = result.usage()  # the same count as the response's `usage`
        self.m.prompt_tokens.labels(self.model).inc(usage.prompt)
        if isinstance(result, GenerateResult):
            self.m.generation_tokens.labels(self.model).inc(usage.completion)

    def failed(self, err: JobError) -> None:
        self._end(outcome_of(err))

    def cancelled(self) -> None:
        """The client went away before the end (the job is cancelled on its way out)."""
        self._end("cancelled")
