"""The worker's life around its one model: load, announce, run jobs, publish their events.

Imported only by the worker process (it imports handlers, hence torch).
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import redis

from handlers.base import ChatHandler, Handler
from handlers.embedding import EmbeddingHandler
from handlers.registry import detect_family, handler_class
from tasks.contract.errors import EXIT_LOAD_FAILED, JobError, server_error
from tasks.contract.logging_setup import note_fact
from tasks.contract.payloads import (
    EmbedJob,
    EmbedResult,
    Event,
    GenerateJob,
    InitializeJob,
    JobBase,
    LoadOptions,
    TokenizeJob,
)
from tasks.contract.settings import Settings
from tasks.worker import generation
from tasks.worker.announcer import Announcer
from tasks.worker.engine_loop import ENGINE_THREAD, EngineLoop, JobEnd
from tasks.worker.gate import ClassGate, model_queues
from tasks.worker.jobs import WorkerJobs

log = logging.getLogger("llmhost.worker")

CLAIMS_KEPT = 10_000  # arrival claims waiting for their pool thread, at most (a bound, never reached)
CLAIM_FRESH_SECONDS = 0.1  # an arrival claim older than this is checked again before the job runs


class _Recorded:
    """What a job's body returns when its final record was already written (by the engine thread)."""


RECORDED = _Recorded()


class WorkerRuntime:
    def __init__(self, settings: Settings, model_id: str, folder: Path, name: str) -> None:
        self.settings = settings
        self.model_id = model_id
        self.folder = folder
        self.name = name
        self.redis = redis.Redis.from_url(settings.redis_url, socket_timeout=10, health_check_interval=30)
        self.jobs = WorkerJobs(self.redis, settings.job_ttl)
        self.announcer = Announcer(self.redis, name, model_id, settings.heartbeat_interval, settings.heartbeat_ttl)
        try:
            self.family = detect_family(model_id, folder)
        except JobError as e:  # llmhost.json names no known family: announced, then the worker exits
            self.announcer.update(state="failed", error=e.message)
            raise
        self.options = LoadOptions(device=settings.device, dtype=settings.dtype, quantization=settings.quantization,
                                   torch_threads=settings.torch_threads, cpu_kernels=settings.cpu_kernels)
        self.handler: Handler | None = None
        self.loop: EngineLoop | None = None  # chat models: the thread that drives the model
        self._embed_lock = threading.Lock()
        self._claimed: dict[str, float] = {}  # jobs claimed on arrival → when, until their pool thread takes them
        self._loaded = threading.Event()  # cleared while a reload or move is under way
        self._moving = threading.Lock()
        chat = self.family.name != "embedding"
        # Chat: each class group may hold max_batch jobs (tasks/worker/gate.py); embeddings: one at a time.
        self.gate = ClassGate(model_id, settings.max_batch if chat and settings.slots_reserved else 0)

    @property
    def concurrency(self) -> int:
        """Pool threads: a chat model batches up to max_batch jobs, with as many again kept for
        the other class group when priorities are on; embeddings run one at a time."""
        if self.family.name == "embedding":
            return 1
        return self.settings.max_batch * (2 if self.gate.cap else 1)

    def queues(self) -> list[str]:
        return model_queues(self.model_id)

    # --- loading -----------------------------------------------------------------------------

    def start(self) -> None:
        """Announce, start the heartbeat, load the model. Raises JobError when loading fails."""
        self.announcer.update(state="loading", family=self.family.name)
        self.announcer.start()
        self._load(self.options)

    def _load(self, options: LoadOptions) -> None:
        started = time.perf_counter()
        handler = handler_class(self.family)(self.model_id, self.folder, options)
        try:
            _load_in_passing_thread(handler)
        except JobError as e:
            self.announcer.update(state="failed", error=e.message)
            raise
        self.handler, self.options = handler, options
        _freeze_heap()  # before any job can use the model: what jobs allocate stays collectable
        self._loaded.set()
        if isinstance(handler, ChatHandler):
            if self.loop is None:
                self.loop = EngineLoop(handler, self.redis, self.settings.max_batch, self.settings.max_batch_tokens,
                                       self.settings.max_prefill_tokens, self.settings.prefix_cache_tokens,
                                       self.settings.slots_reserved)
                self.loop.start()
                self.announcer.stats = self.loop.stats
            else:
                self.loop.replace_engine(handler)
        self.announcer.update(state="ready", error="", **handler.describe())
        log.info("%s ready in %.1f s (%s)", self.model_id, time.perf_counter() - started, handler.describe())

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.stop()
        self.announcer.stop()

    # --- job plumbing ------------------------------------------------------------------------

    def claim(self, job_id: str) -> None:
        """Claim a job as its message arrives (Celery's consumer thread); the pool thread that runs
        it takes the claim (``_begin``). Only successful claims are kept: a duplicate message's
        failed claim must not hide the first one's. A Redis error leaves the claim to ``_begin``."""
        try:
            moved = self.jobs.move(job_id, "running", worker=self.name, started_at=time.time())
        except redis.RedisError as e:
            log.warning("job %s: could not claim it on arrival (%s)", job_id, e)
            return
        if moved == "ok":
            self._claimed[job_id] = time.monotonic()
            while len(self._claimed) > CLAIMS_KEPT:  # claims no task took (revoked on the way)
                try:
                    self._claimed.pop(next(iter(self._claimed)), None)
                except (RuntimeError, StopIteration):  # a pool thread took one meanwhile
                    break

    def _take_claim(self, job_id: str) -> str:
        """"ok" when this worker holds the job's claim: the one made on arrival, trusted as it is
        when it is fresh; one that waited (a message received while every thread was busy, as after
        a broker reconnect) is checked again, as the job may have been cancelled or reaped since.
        Without one, the job is claimed now."""
        at = self._claimed.pop(job_id, None)
        if at is None:
            return self.jobs.move(job_id, "running", worker=self.name, started_at=time.time())
        if time.monotonic() - at < CLAIM_FRESH_SECONDS:
            return "ok"
        try:
            status, worker = self.jobs.holder(job_id)
        except redis.RedisError as e:  # the claim is ours: run it rather than leave it `running` unrun
            log.warning("job %s: could not check its claim again (%s); running it", job_id, e)
            return "ok"
        return "ok" if status == "running" and worker == self.name else status or ""

    def _begin(self, job: JobBase) -> bool:
        """Take the job's claim, or claim it now, then check it is still worth running here. False
        when it was not ours to run (cancelled, ended, or a copy of a job another worker runs) or
        when we ended it: only a job this worker claimed is ever failed by it, never a copy running
        elsewhere."""
        moved = self._take_claim(job.job_id)
        if moved != "ok":
            log.info("job %s skipped: %s", job.job_id, moved or "unknown job")
            return False
        if time.time() > job.deadline:
            self._fail(job, JobError("The job waited in the queue past its deadline and was not run.",
                                     status_code=504, type="timeout_error", code="request_timeout"))
            return False
        if job.model != self.model_id:  # taken before this worker moved to another model
            self._fail(job, moved_error(job.model))
            return False
        return True

    @staticmethod
    def _reply(job: JobBase, event: Event) -> tuple[str, str] | None:
        """(channel, message) for ``event``, when someone waits on this job."""
        if not job.reply_to:
            return None
        event.job = job.job_id
        return job.reply_to, event.model_dump_json(exclude_defaults=True)

    def _publish(self, job: JobBase, event: Event) -> None:
        if (reply := self._reply(job, event)) is not None:
            self.jobs.publish(*reply)

    def reject(self, job_id: str, message: str) -> None:
        """Fail a job whose payload could not be read (no reply channel known)."""
        if job_id:
            self._claimed.pop(job_id, None)
            self.jobs.move(job_id, "failed", error=server_error(message).to_dict(), finished_at=time.time())

    def _final(self, job: JobBase, status: str, event: Event, **fields: object) -> None:
        """Record a final state; a Redis blip must not leave the job `running` forever."""
        for attempt in range(6):
            try:
                self.jobs.move(job.job_id, status, notify=self._reply(job, event), finished_at=time.time(), **fields)
                return
            except redis.RedisError as e:
                log.warning("job %s: could not record %s (%s); retrying", job.job_id, status, e)
                time.sleep(min(0.25 * 2 ** attempt, 4.0))
        log.error("job %s: %s could not be recorded; the front will see a lost worker or a timeout", job.job_id, status)

    def _finish(self, job: JobBase, result: dict) -> None:
        self._final(job, "succeeded", Event(type="done", result=result), result=result)

    def _fail(self, job: JobBase, error: JobError) -> None:
        self._final(job, "failed", Event(type="error", error=error.to_dict()), error=error.to_dict())

    def _run(self, job: JobBase, body: Callable[[], dict | _Recorded | None]) -> None:
        job_id = job.job_id
        if not self._begin(job):
            return
        try:
            result = body()
        except JobError as e:
            log.info("job %s failed: %s", job_id, e.message)
            self._fail(job, e)
        except Exception as e:  # noqa: BLE001 - a bug must still end the job in a definite state
            log.exception("job %s crashed", job_id)
            self._fail(job, server_error(f"The worker failed on this request: {type(e).__name__}: {e}"))
        else:
            if isinstance(result, _Recorded):
                return
            if result is not None:
                self._finish(job, result)
            else:
                try:
                    stopped_by_deadline = self.jobs.status(job_id) == "running"  # not by a cancel
                except redis.RedisError:
                    stopped_by_deadline = True
                if stopped_by_deadline:
                    self._fail(job, JobError("The job ran past its deadline and was stopped.", status_code=504,
                                             type="timeout_error", code="request_timeout"))

    def _handler(self, kind: type[Handler], job: JobBase) -> Handler:
        # During a reload (initialize, move) jobs wait for the model instead of failing.
        self._loaded.wait(timeout=max(0.0, job.deadline - time.time()))
        if job.model != self.model_id:
            raise moved_error(job.model)
        if self.handler is None:
            raise server_error("The model is not loaded.")
        if not isinstance(self.handler, kind):
            what = "embeddings" if kind is EmbeddingHandler else "text generation"
            raise JobError(f"The model `{self.model_id}` is a {self.handler.kind} model and cannot do {what}.",
                           status_code=400, type="invalid_request_error", code="model_not_supported", param="model")
        return self.handler

    # --- the three job kinds -----------------------------------------------------------------

    def generate(self, job: GenerateJob) -> None:
        def body() -> dict | _Recorded | None:
            handler = self._handler(ChatHandler, job)
            assert isinstance(handler, ChatHandler) and self.loop is not None
            plan = generation.prepare(handler, job)
            if job.stream:  # a stream's HTTP status waits for this; a sync answer does not
                self._publish(job, Event(type="started"))
            attempt = self.jobs.attempt(job.job_id) if job.events_ttl else 0  # tags its kept events
            end = self._job_end(job, plan)
            try:
                waiters = generation.wait(self.loop, generation.start(self.loop, job, plan, attempt, end))
            finally:
                if end is not None:
                    end.release()
            if (engine := generation.engine_seconds(waiters)) is not None:
                note_fact(engine_seconds=round(engine, 5))
            if end is not None and end.recorded:  # by the engine thread, in the round trip of the job's last step
                return RECORDED
            result = generation.collect(job, plan, waiters)
            if result is None:
                log.info("job %s cancelled", job.job_id)
            return result.model_dump() if result is not None else None
        self._run(job, body)

    def _job_end(self, job: GenerateJob, plan: generation.Prepared) -> JobEnd | None:
        """The job's final record, for the engine thread to write when its last sequence ends,
        when the job simply succeeded (:class:`~tasks.worker.engine_loop.JobEnd`): its result,
        collected there, and the `done` event to its reply channel, in one move. None for a job
        whose result is large (logprobs): building it would hold up every stream's next token."""
        if job.sampling.logprobs is not None or job.sampling.prompt_logprobs is not None:
            return None

        def record(end: JobEnd, pipe: Any) -> bool:
            if any(w.error is not None for w in end.waiters):
                return False
            result = generation.collect(job, plan, end.waiters)
            if result is None:  # cancelled or stopped by its deadline: the pool thread tells which
                return False
            payload = result.model_dump()
            self.jobs.move_on(pipe, job.job_id, "succeeded", notify=self._reply(job, Event(type="done", result=payload)),
                              finished_at=time.time(), result=payload)
            return True
        return JobEnd(record, generation.sequences(plan, job))

    def embed(self, job: EmbedJob) -> None:
        def body() -> dict:
            handler = self._handler(EmbeddingHandler, job)
            assert isinstance(handler, EmbeddingHandler)
            with self._embed_lock:
                vectors, tokens = handler.embed(job.inputs, job.dimensions)
            return EmbedResult(vectors=vectors, prompt_tokens=tokens).model_dump()
        self._run(job, body)

    def tokenize(self, job: TokenizeJob) -> None:
        """Runs in the pool thread: tokenizers are thread-safe and the model is not needed."""
        def body() -> dict:
            handler = self._handler(ChatHandler, job)
            assert isinstance(handler, ChatHandler)
            if job.tokens is not None:
                vocab = int(handler.model.config.vocab_size)
                if bad := [t for t in job.tokens if not 0 <= t < vocab]:
                    raise JobError(f"Token ids must lie in [0, {vocab}); got {bad[:5]}.", param="tokens")
                return {"prompt": handler.tokenizer.decode(job.tokens)}
            if job.messages is not None:
                ids = handler.encode_chat(job.messages)
            else:
                ids = handler.tokenizer.encode(job.prompt or "", add_special_tokens=job.add_special_tokens)
            return {"tokens": ids, "count": len(ids), "max_model_len": handler.max_context,
                    "token_strs": handler.tokenizer.convert_ids_to_tokens(ids)}
        self._run(job, body)

    def move_to(self, model_id: str, folder: Path, switch_queues: Callable[[list[str], list[str]], None]) -> None:
        """Serve another model from now on (the API's worker move). Runs on a thread of its own:
        stop taking the old model's jobs, let running sequences finish, load the new model, then
        consume its queue. Jobs of the old model this worker had already taken are failed with a
        503 naming the model (clients retry; another worker of it takes them), never run on the new
        one. On a failed load the worker goes back to its old model and queue."""
        if not self._moving.acquire(blocking=False):
            log.warning("a move is already under way; ignoring the move to %s", model_id)
            return
        try:
            old = (self.model_id, self.folder)
            switch_queues([], model_queues(old[0]))  # stop taking the old model's jobs
            try:
                self._reload(self.options, target=(model_id, folder))
                moved = True
            except JobError:
                log.exception("moving to %s failed; back to %s", model_id, old[0])
                moved = False
            if not moved:  # loaded outside the except block: the failed attempt must not be frozen with it
                self._reload(self.options, target=old, fallback=None)
                switch_queues(model_queues(old[0]), [])
                return
            self.gate.model = model_id
            self.gate.resume_all()
            switch_queues(model_queues(model_id), [])
            log.info("moved from %s to %s", old[0], model_id)
        finally:
            self._moving.release()

    def _reload(self, options: LoadOptions, target: tuple[str, Path] | None = None,
                fallback: LoadOptions | None = None) -> None:
        """Replace the loaded model once running sequences are done. The old weights are released
        first (old + new would not fit a GPU sized for one). Jobs that arrive meanwhile wait for
        the new model (``_handler``). If neither the new options nor ``fallback`` load, the process
        exits so that the supervisor restarts it, rather than heart-beating without a model."""
        def swap() -> None:
            self._loaded.clear()
            self.announcer.update(state="loading")
            if target is not None:
                self.model_id, self.folder = target
                self.family = detect_family(*target)
                self.announcer.update(model=target[0], family=self.family.name)
            if self.loop is not None:
                self.loop.engine.release()
            self.handler = None
            gc.unfreeze()  # the old model's objects become collectable again
            gc.collect()
            _empty_cuda_cache()
            try:
                self._load(options)
                return
            except JobError as e:
                if fallback is None:
                    raise
                log.warning("loading with the new options failed; back to the previous ones", exc_info=True)
                error = _detached(e)
            # Outside the except block, so that the failed attempt (its frames hold what it had loaded)
            # is garbage when the fallback's load freezes the heap.
            try:
                self._load(fallback)
            except JobError as e:
                log.critical("neither the new nor the previous model options load (%s); exiting", e.message)
                self.stop()
                os._exit(EXIT_LOAD_FAILED)
            raise error
        if self.loop is not None:
            self.loop.call_when_idle(swap)
        else:
            with self._embed_lock:
                swap()

    def initialize(self, job: InitializeJob) -> None:
        """Reload this worker's model with new options; on failure, go back to the old ones.
        Running sequences finish first; jobs that arrive meanwhile wait, none is lost."""
        def body() -> dict:
            self._reload(job.options, fallback=self.options)
            return {"model": self.model_id, "worker": self.name, **self.handler.describe(),  # type: ignore[union-attr]
                    "options": job.options.model_dump()}
        self._run(job, body)


def _freeze_heap() -> None:
    """Leave what the process holds once its model is loaded (~400,000 objects: torch,
    transformers, the tokenizer, the model's modules) out of Python's cyclic garbage collector: a
    full collection walked all of them, 150-175 ms with every thread stopped (the engine thread's
    decode step and each stream's tokens with it). They are freed as before when nothing refers to
    them; a reload unfreezes them first (``_reload``). vLLM and SGLang freeze their heaps after
    start-up too."""
    gc.collect()
    gc.freeze()


def _detached(error: JobError) -> JobError:
    """The error without its traceback and chained causes, which hold the frames of what failed."""
    error.__traceback__ = error.__cause__ = error.__context__ = None
    return error


def _load_in_passing_thread(handler: Handler) -> None:
    """Load on a thread that then ends, unless this is the engine's thread already (a reload).

    OpenMP (libgomp) keeps a team of helper threads for every thread that ran parallel torch code,
    and once a process holds more OpenMP threads than cores its helpers barely spin between parallel
    regions: each of a decode step's ~600 regions then waits for a sleeping helper to wake. Loading on
    the main thread left its team behind, and the engine thread's decode ran on 1.3 of 2 cores
    (a SmolLM2 step at batch 1: ~50 ms instead of ~35). A thread that ends takes its team with it."""
    if threading.current_thread().name == ENGINE_THREAD:
        handler.load()
        return
    failure: list[BaseException] = []

    def load() -> None:
        try:
            handler.load()
        except BaseException as e:  # noqa: BLE001 - re-raised on the calling thread
            failure.append(e)

    loader = threading.Thread(target=load, name="llmhost-load")
    loader.start()
    loader.join()
    if failure:
        raise failure[0]


def moved_error(model: str) -> JobError:
    return JobError(f"This worker no longer serves `{model}`; retry and another worker of it will take the job.",
                    status_code=503, type="service_unavailable", code="model_not_served", param="model",
                    headers={"Retry-After": "1"})


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
