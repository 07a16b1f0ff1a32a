"""What the routes call: check the model is served, submit the request's job, wait or stream.

Routes stay thin (parse, one call, answer). Requests arrive checked and translate themselves into
job payloads (``to_job``); a job's typed events (its :class:`~tasks.queue.client.JobWatch`) are
translated into answers by ``responses.py`` (run to the end) and ``streaming.py`` (SSE).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Generic, Optional

import redis.asyncio as aioredis

from tasks.contract.catalog import list_models, resolve
from tasks.contract.errors import JobError
from tasks.contract.logging_setup import bind, request_id_var
from tasks.contract.payloads import (
    FINAL_STATUSES,
    TASK_EMBED,
    TASK_GENERATE,
    TASK_INITIALIZE,
    TASK_TOKENIZE,
    EmbedJob,
    EmbedResult,
    Endpoint,
    GenerateJob,
    GenerateResult,
    InitializeJob,
    JobBase,
    JobStatus,
    LoadOptions,
    TokenizeJob,
)
from tasks.contract.records import WorkerInfo
from tasks.contract.settings import Settings
from tasks.queue.client import JobClient, JobWatch, new_job_id
from tasks.queue.events import R

from . import responses
from .anthropic import messages as anthropic
from .metrics import Metrics
from .middleware import request_started
from .schemas.anthropic import CountTokensRequest, MessagesRequest
from .schemas.chat import ChatCompletionRequest
from .schemas.completions import CompletionRequest
from .schemas.embeddings import EmbeddingRequest
from .schemas.jobs import BackgroundBody
from .schemas.tokenize import DetokenizeRequest, TokenizeRequest


@dataclass
class Submitted(Generic[R]):
    """A watched job; for streams, one its worker has accepted (the prompt passed validation)."""

    job_id: str
    created: int
    model: str
    watch: JobWatch[R]
    # A stream opened before its worker accepted the job (Anthropic's, after a grace): the rest of that wait.
    accepting: Optional[asyncio.Task[None]] = None


# How long an Anthropic stream waits for its worker to accept the job before it opens (a refusal until
# then is an HTTP error); a job queued longer gets its 200, message_start and pings while it waits.
ACCEPT_GRACE_SECONDS = 2.0


async def _accepted_within(watch: JobWatch[Any], seconds: float) -> Optional[asyncio.Task[None]]:
    """None when the worker accepted the job within ``seconds`` (a refusal is raised); else the
    wait, still running (a timeout must not cancel it: that would cancel the job)."""
    waiting = asyncio.ensure_future(watch.started())
    try:
        done, _ = await asyncio.wait({waiting}, timeout=seconds)
    except BaseException:
        waiting.cancel()
        raise
    if waiting in done:
        waiting.result()
        return None
    return waiting


class Gateway:
    def __init__(self, settings: Settings, redis_client: aioredis.Redis, jobs: JobClient,
                 metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.redis = redis_client
        self.jobs = jobs
        self.metrics = metrics or Metrics()

    # --- models and workers ----------------------------------------------------------------

    async def workers(self, fresh: bool = False) -> list[WorkerInfo]:
        return await self.jobs.workers(fresh)

    async def model_cards(self) -> list[dict[str, Any]]:
        workers = await self.workers()
        return [self._card(m.id, m.created, m.owned_by, workers) for m in list_models(self.settings.models_dir)]

    async def model_card(self, model_id: str) -> dict[str, Any]:
        m = resolve(self.settings.models_dir, model_id)
        return self._card(m.id, m.created, m.owned_by, await self.workers())

    @staticmethod
    def _card(model_id: str, created: int, owned_by: str, workers: list[WorkerInfo]) -> dict[str, Any]:
        mine = [w for w in workers if w.model == model_id]
        ready = [w for w in mine if w.state == "ready"]
        return {
            "id": model_id, "object": "model", "created": created, "owned_by": owned_by,
            "served": bool(ready), "workers": len(ready),
            "workers_loading": sum(w.state == "loading" for w in mine),
            "kind": next((w.kind for w in ready if w.kind), None),
            # The handler family (handlers/registry.py): a ready worker's, else any announced one.
            "family": next((w.family for w in ready + mine if w.family), None),
        }

    async def ensure_served(self, model: str, kind: str) -> None:
        """404 for an unknown model; 503 at once when no worker is ready for it."""
        resolve(self.settings.models_dir, model)
        mine = [w for w in await self.workers() if w.model == model]
        if not any(w.state == "ready" for w in mine):  # the cache may predate a worker that just came up
            mine = [w for w in await self.workers(fresh=True) if w.model == model]
        ready = [w for w in mine if w.state == "ready"]
        if not ready:
            if any(w.state == "loading" for w in mine):
                why = "is loading on a worker; retry in a few seconds"
            elif failed := [w for w in mine if w.state == "failed"]:
                why = f"failed to load on its worker: {failed[0].error}"
            else:
                why = f"is not served by any worker (start one with `python -m tasks.worker --model {model}`)"
            raise JobError(f"The model `{model}` {why}.", status_code=503, type="service_unavailable",
                           code="model_not_served", param="model", headers={"Retry-After": "5"})
        if kind and ready[0].kind and ready[0].kind != kind:
            what = "embeddings" if kind == "embedding" else "chat and text completions"
            raise JobError(f"The model `{model}` is a {ready[0].kind} model and does not serve {what}.",
                           status_code=400, code="model_not_supported", param="model")

    # --- requests → jobs ---------------------------------------------------------------------

    def _deadline(self) -> float:
        return time.time() + self.settings.request_timeout

    async def _enqueue(self, task: str, job: JobBase, endpoint: Endpoint, meta: dict[str, Any],
                       watch: bool, ttl: int | None = None) -> JobWatch[Any] | None:
        """Bind the job id for the log lines; enqueue, refused at once (429) when the model's queue of
        the job's class is full (LLMHOST_MAX_QUEUE_DEPTH)."""
        bind(job_id=job.job_id)
        return await self.jobs.submit(task, job, endpoint=endpoint, meta=meta, watch=watch, ttl=ttl,
                                      max_depth=self.settings.max_queue_depth)

    async def _submit(self, task: str, job: JobBase, endpoint: Endpoint, kind: str) -> Submitted[Any]:
        """Check, enqueue and watch; the watch counts the job in the metrics."""
        await self.ensure_served(job.model, kind)
        watch = await self._enqueue(task, job, endpoint, {}, watch=True)
        assert watch is not None
        watch.observer = self.metrics.track(endpoint, job.model, request_started())
        return Submitted(job.job_id, int(time.time()), job.model, watch)

    async def chat(self, req: ChatCompletionRequest) -> dict[str, Any]:
        job = req.to_job(new_job_id("chatcmpl"), self._deadline(), request_id_var.get())
        sub: Submitted[GenerateResult] = await self._submit(TASK_GENERATE, job, "/v1/chat/completions", "chat")
        return responses.chat_completion(sub.job_id, sub.created, sub.model, await sub.watch.result())

    async def completion(self, req: CompletionRequest) -> dict[str, Any]:
        job = req.to_job(new_job_id("cmpl"), self._deadline(), request_id_var.get())
        sub: Submitted[GenerateResult] = await self._submit(TASK_GENERATE, job, "/v1/completions", "chat")
        return responses.text_completion(sub.job_id, sub.created, sub.model, await sub.watch.result())

    async def embeddings(self, req: EmbeddingRequest) -> dict[str, Any]:
        job = req.to_job(new_job_id("emb"), self._deadline(), request_id_var.get())
        sub: Submitted[EmbedResult] = await self._submit(TASK_EMBED, job, "/v1/embeddings", "embedding")
        return responses.embeddings(sub.model, await sub.watch.result(), req.encoding_format)

    async def stream_chat(self, req: ChatCompletionRequest) -> Submitted[GenerateResult]:
        job = req.to_job(new_job_id("chatcmpl"), self._deadline(), request_id_var.get())
        return await self._open_stream(job, "/v1/chat/completions")

    async def stream_completion(self, req: CompletionRequest) -> Submitted[GenerateResult]:
        job = req.to_job(new_job_id("cmpl"), self._deadline(), request_id_var.get())
        return await self._open_stream(job, "/v1/completions")

    async def _open_stream(self, job: GenerateJob, endpoint: Endpoint,
                           grace: Optional[float] = None) -> Submitted[GenerateResult]:
        """Submit a streaming job and wait for ``started``, so that a refused prompt is an ordinary
        HTTP error rather than a 200 followed by an error event; with ``grace``, that long at most."""
        sub: Submitted[GenerateResult] = await self._submit(TASK_GENERATE, job, endpoint, "chat")
        if grace is None:
            await sub.watch.started()
        else:
            sub.accepting = await _accepted_within(sub.watch, grace)
        return sub

    # --- the Anthropic Messages API (translated by api/anthropic/) -----------------------------

    async def messages(self, req: MessagesRequest) -> dict[str, Any]:
        job = req.to_job(anthropic.new_message_id(), self._deadline(), request_id_var.get())
        sub: Submitted[GenerateResult] = await self._submit(TASK_GENERATE, job, "/v1/messages", "chat")
        return anthropic.message(sub.job_id, sub.model, await sub.watch.result())

    async def stream_messages(self, req: MessagesRequest) -> Submitted[GenerateResult]:
        job = req.to_job(anthropic.new_message_id(), self._deadline(), request_id_var.get())
        return await self._open_stream(job, "/v1/messages", grace=ACCEPT_GRACE_SECONDS)

    async def count_message_tokens(self, req: CountTokensRequest) -> dict[str, int]:
        """``usage.input_tokens`` of the same request, counted by the model's worker (see the schema)."""
        job = req.to_job(new_job_id("count"), self._deadline(), request_id_var.get())
        if isinstance(job, TokenizeJob):
            sub: Submitted[dict[str, Any]] = await self._submit(TASK_TOKENIZE, job, "tokenize", "chat")
            return {"input_tokens": int((await sub.watch.result())["count"])}
        gen: Submitted[GenerateResult] = await self._submit(TASK_GENERATE, job, "/v1/messages/count_tokens", "chat")
        return {"input_tokens": (await gen.watch.result()).usage().prompt}

    # --- async jobs ----------------------------------------------------------------------------

    async def submit_async(self, endpoint: Endpoint, body: BackgroundBody) -> dict[str, Any]:
        job_id, deadline, rid = new_job_id("job"), time.time() + self.settings.job_ttl, request_id_var.get()
        meta: dict[str, Any] = {}
        job: GenerateJob | EmbedJob
        if isinstance(body, EmbeddingRequest):
            job, task, kind = body.to_job(job_id, deadline, rid), TASK_EMBED, "embedding"
            meta["encoding_format"] = body.encoding_format
        else:
            job, task, kind = body.to_job(job_id, deadline, rid), TASK_GENERATE, "chat"
        await self.ensure_served(job.model, kind)
        job.klass = "background"  # behind every interactive request (tasks/worker/gate.py)
        return await self._submit_background(task, job, endpoint, meta)

    async def _submit_background(self, task: str, job: JobBase, endpoint: Endpoint, meta: dict[str, Any]) -> dict[str, Any]:
        """Enqueue without waiting; the answer describes the job as accepted (queued)."""
        await self._enqueue(task, job, endpoint, meta, watch=False)
        return {"id": job.job_id, "object": "job", "status": "queued", "endpoint": endpoint,
                "model": job.model, "created_at": int(time.time()), "started_at": None,
                "finished_at": None, "result": None, "error": None}

    async def initialize(self, model: str, options: LoadOptions) -> dict[str, Any]:
        resolve(self.settings.models_dir, model)
        if not [w for w in await self.workers() if w.model == model]:
            await self.ensure_served(model, "")
        job = InitializeJob(job_id=new_job_id("init"), model=model, options=options,
                            deadline=time.time() + self.settings.job_ttl, request_id=request_id_var.get())
        return await self._submit_background(TASK_INITIALIZE, job, "initialize", {})

    async def job_view(self, job_id: str) -> dict[str, Any]:
        rec = await self.jobs.store.get(job_id)
        if rec is None:
            raise JobError(f"No job with id `{job_id}` (unknown, or its result expired).", status_code=404,
                           type="invalid_request_error", code="job_not_found", param="id")
        rec = await self.jobs.reconcile(job_id, rec)
        status: JobStatus = rec["status"]
        view: dict[str, Any] = {
            "id": job_id, "object": "job", "status": status, "endpoint": rec.get("endpoint"),
            "model": rec.get("model"), "created_at": int(rec["created_at"]),
            "started_at": int(rec["started_at"]) if rec.get("started_at") else None,
            "finished_at": int(rec["finished_at"]) if rec.get("finished_at") and status in FINAL_STATUSES else None,
            "result": None, "error": None,
        }
        if status == "succeeded" and rec.get("result") is not None:
            view["result"] = responses.for_endpoint(rec["endpoint"], job_id, view["created_at"], rec["model"],
                                                    rec.get("meta") or {}, rec["result"])
        if rec.get("error"):
            view["error"] = {k: v for k, v in rec["error"].items() if k != "status_code"}
        return view

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        await self.job_view(job_id)  # 404 when unknown
        await self.jobs.cancel(job_id)
        return await self.job_view(job_id)

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        try:
            await self.redis.ping()
        except Exception as e:  # noqa: BLE001
            return False, {"redis": f"unreachable: {type(e).__name__}", "workers_ready": 0}
        workers = await self.workers(fresh=True)
        served = {w.model for w in workers if w.state == "ready"}
        missing = [m for m in self.settings.models_to_ready if m not in served]
        info: dict[str, Any] = {"redis": "ok", "workers_ready": sum(w.state == "ready" for w in workers),
                                "models": sorted(served), "missing": missing}
        # Ready means every model it must serve has a ready worker (LLMHOST_READY_MODELS, else the
        # default models), so `make run`'s "ready" line and a load balancer's check mean it.
        return bool(served) and not missing, info

    # --- tokenization ----------------------------------------------------------------------------

    async def tokenize(self, req: TokenizeRequest | DetokenizeRequest) -> dict[str, Any]:
        job = req.to_job(new_job_id("tok"), self._deadline(), request_id_var.get())
        sub: Submitted[dict[str, Any]] = await self._submit(TASK_TOKENIZE, job, "tokenize", "chat")
        return await sub.watch.result()

    # --- workers ---------------------------------------------------------------------------------

    async def worker_list(self) -> dict[str, Any]:
        return {"object": "list", "data": [vars(w) for w in await self.workers(fresh=True)]}

    async def move_worker(self, name: str, model: str) -> dict[str, Any]:
        """Point one worker at another model (Celery remote control, answered by that worker only)."""
        resolve(self.settings.models_dir, model)
        worker = next((w for w in await self.workers(fresh=True) if w.name == name), None)
        if worker is None:
            raise JobError(f"No live worker named `{name}`.", status_code=404, code="worker_not_found", param="name")
        replies = await asyncio.to_thread(self.jobs.celery.control.broadcast, "llmhost_move",
                                          arguments={"model": model}, destination=[name], reply=True, timeout=5)
        answer: dict[str, Any] = next(iter(replies[0].values()), {}) if replies else {}
        if not answer:
            raise JobError(f"The worker `{name}` did not answer.", status_code=504, type="timeout_error",
                           code="worker_timeout")
        if "error" in answer:
            raise JobError(answer["error"], status_code=400, param="model")
        return {"worker": name, "from": worker.model, "to": model, "status": "moving"}
