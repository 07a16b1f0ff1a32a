"""The one thread that drives the model: it owns the engine, steps it while there is work,
publishes each step's text deltas in one Redis round trip (one message per reply channel, that is
per API process, for all of its streams; kept in the job's Redis Stream when the job asks, in the
same round trip), records the jobs whose last sequence ended in that same round trip
(:class:`JobEnd`), and aborts sequences whose job was cancelled or ran past its deadline (checked
for the whole batch every CANCEL_CHECK_SECONDS, in that same round trip when a step has one).

Celery's pool threads hand it sequences through :meth:`EngineLoop.submit` and wait on the
returned :class:`SeqWaiter`; nothing else touches the model while it runs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import redis
import torch

from handlers.base import ChatHandler
from handlers.engine import Engine, Sequence
from tasks.contract.errors import JobError, server_error
from tasks.contract.payloads import Event, SamplingParams, reply_message
from tasks.contract.records import EVENTS_MAXLEN, events_key, job_key

log = logging.getLogger("llmhost.engine")

CANCEL_CHECK_SECONDS = 0.05
ENGINE_THREAD = "llmhost-engine"  # the one thread that runs the model's parallel (OpenMP) code


@dataclass
class SeqWaiter:
    job_id: str
    index: int
    reply_to: str | None  # set when someone streams this job's deltas
    deadline: float
    done: threading.Event = field(default_factory=threading.Event)
    seq: Sequence | None = None
    error: JobError | None = None
    # Streams only: (delta, final) -> (reasoning, text) to publish (handlers.reasoning.ChatStreamFilter:
    # a thought apart from the answer, tool calls' markup out of content).
    filter: Callable[[str, bool], tuple[str, str]] | None = None
    streamed: bool = False  # some text of it went out: its job can no longer be redelivered invisibly
    # Jobs that keep their events (JobBase.events_ttl): for how long, and which attempt wrote them.
    keep_ttl: int = 0
    attempt: int = 0
    end: "JobEnd | None" = None  # the job's final record, written by this thread when its sequences end
    # perf_counter() when the engine took the sequence, and at the end of the step that finished it
    # (before that step's Redis round trip): the job's time in the engine (generation.engine_seconds).
    added_at: float = 0.0
    ended_at: float = 0.0


@dataclass
class JobEnd:
    """A job's final record, made on the engine thread in the round trip of the step that ended its
    last sequence, instead of by its pool thread afterwards (a thread wake-up and a round trip
    later). ``record(end, pipe)`` queues the final move on the step's pipeline and returns True, or
    returns False when the job did not simply succeed (an error, a cancel): its pool thread then
    decides, as it does whenever ``recorded`` stays False (the pipeline failed, Redis did not
    answer). Its waiters and it refer to each other: the pool thread ``release``s it at the end."""

    record: Callable[["JobEnd", Any], bool]
    expected: int  # the job's sequences: it has not ended before every one of them was submitted
    waiters: list[SeqWaiter] = field(default_factory=list)
    tried: bool = False  # record was called (once per job, whatever it returned)
    recorded: bool = False

    def ended(self) -> bool:
        return len(self.waiters) == self.expected and all(
            w.error is not None or (w.seq is not None and w.seq.finished) for w in self.waiters)

    def release(self) -> None:
        """Drop the waiters (their sequences, tokens, matchers), which refer back to this."""
        self.expected = -1  # never ends again
        self.waiters = []


@dataclass
class _Add:
    waiter: SeqWaiter
    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int
    grammar: Any = None
    handler: Any = None  # the handler that tokenised the prompt: must still be the engine's
    priority: int = 0  # 0 interactive, 1 background, 2 batch


@dataclass
class _Call:
    """Run ``fn`` on the loop thread once the engine is idle (model reloads); reply with its result."""

    fn: Callable[[], Any]
    reply: "queue.SimpleQueue[tuple[Any, BaseException | None]]" = field(default_factory=queue.SimpleQueue)


class EngineLoop(threading.Thread):
    def __init__(self, handler: ChatHandler, client: redis.Redis, max_batch: int, max_batch_tokens: int,
                 max_prefill_tokens: int, prefix_cache_tokens: int, reserved_slots: int = 0) -> None:
        super().__init__(name=ENGINE_THREAD, daemon=True)
        self.client = client
        self._limits = (max_batch, max_batch_tokens, max_prefill_tokens, prefix_cache_tokens)
        self._reserved = reserved_slots
        self.engine = self._new_engine(handler)
        self._inbox: "queue.SimpleQueue[_Add | _Call | None]" = queue.SimpleQueue()
        self._waiters: dict[str, SeqWaiter] = {}
        self._last_cancel_check = 0.0
        self._seq_counter = 0
        self.peak_batch = 0

    def stats(self) -> dict[str, int]:
        held = 1 if self.engine.chunked is not None else 0  # a long prompt being prefilled in chunks
        return {"running": len(self.engine.running) + held, "waiting": len(self.engine.waiting),
                "peak_batch": self.peak_batch}

    # --- called from Celery's pool threads --------------------------------------------------------

    def submit(self, job_id: str, index: int, prompt_ids: list[int], params: SamplingParams, max_tokens: int,
               reply_to: str | None, deadline: float, grammar: Any = None,
               filter: Callable[[str, bool], tuple[str, str]] | None = None, handler: Any = None,
               priority: int = 0, keep: tuple[int, int] = (0, 0), end: JobEnd | None = None) -> SeqWaiter:
        """``keep``: (seconds, attempt) to keep the sequence's events in its job's stream; (0, 0): not kept.
        ``end``: the job's final record, made by this thread once its last sequence ends."""
        waiter = SeqWaiter(job_id, index, reply_to, deadline, filter=filter, keep_ttl=keep[0], attempt=keep[1], end=end)
        if end is not None:
            end.waiters.append(waiter)
        self._inbox.put(_Add(waiter, prompt_ids, params, max_tokens, grammar, handler, priority))
        return waiter

    def call_when_idle(self, fn: Callable[[], Any]) -> Any:
        call = _Call(fn)
        self._inbox.put(call)
        result, error = call.reply.get()
        if error is not None:
            raise error
        return result

    def stop(self) -> None:
        self._inbox.put(None)

    # --- the loop -----------------------------------------------------------------------------------

    def run(self) -> None:
        threads = self.engine.handler.options.torch_threads
        if threads:
            # OpenMP's thread count is per calling thread: set it where the model actually runs.
            torch.set_num_threads(threads)
        while True:
            try:
                item = self._inbox.get(timeout=None if not self.engine.has_work() else 0)
            except queue.Empty:
                item = False  # type: ignore[assignment]
            if item is None:
                return
            if isinstance(item, _Add):
                self._add(item)
                continue  # take everything that arrived before stepping: they prefill together
            if isinstance(item, _Call):
                self._drain()
                try:
                    item.reply.put((item.fn(), None))
                except BaseException as e:  # noqa: BLE001 - handed back to the caller
                    item.reply.put((None, e))
                continue
            self._step()

    def _add(self, item: _Add) -> None:
        if item.handler is not None and item.handler is not self.engine.handler:
            # Tokenised for a model that a reload replaced meanwhile: its ids mean nothing here.
            item.waiter.error = JobError("The model was reloaded while this request was being prepared; retry.",
                                         status_code=503, type="service_unavailable", code="model_reloaded",
                                         headers={"Retry-After": "1"})
            item.waiter.done.set()
            return
        self._seq_counter += 1
        seq_id = f"{item.waiter.job_id}#{item.waiter.index}#{self._seq_counter}"
        added_at = time.perf_counter()
        try:
            item.waiter.seq = self.engine.add(seq_id, item.prompt_ids, item.params, item.max_tokens, item.grammar,
                                              priority=item.priority)
        except Exception as e:  # noqa: BLE001 - e.g. a matcher that cannot be made: fail this one only
            item.waiter.error = server_error(f"Could not start this sequence: {type(e).__name__}: {e}")
            item.waiter.done.set()
            return
        item.waiter.added_at = added_at
        if not self._waiters:
            # Its job's status was read when it was claimed, a moment ago: the first step of an idle
            # engine need not wait for a cancel check (one Redis round trip before its prefill).
            self._last_cancel_check = time.monotonic()
        self._waiters[seq_id] = item.waiter

    def _drain(self) -> None:
        while self.engine.has_work():
            self._step()

    def replace_engine(self, handler: ChatHandler) -> None:
        """On the loop thread, with the engine idle: serve a freshly loaded model."""
        self.engine = self._new_engine(handler)

    def _new_engine(self, handler: ChatHandler) -> Engine:
        return Engine(handler, *self._limits, reserved_slots=self._reserved)

    def _step(self) -> None:
        self._check_cancelled()
        try:
            outputs = self.engine.step()
            stepped = time.perf_counter()
            self.peak_batch = max(self.peak_batch, self.engine.last_batch)
        except Exception as e:  # noqa: BLE001 - fail every sequence in the batch, keep serving
            log.exception("engine step failed; failing %d sequences", len(self._waiters))
            err = server_error(f"The model failed while generating: {type(e).__name__}: {e}")
            for waiter in self._waiters.values():
                waiter.error = err
                waiter.done.set()
            self._waiters.clear()
            self.engine = self._new_engine(self.engine.handler)
            return
        if not outputs:
            return
        ends: list[tuple[JobEnd, int]] = []  # jobs ended by this step, each with its move's place in the pipeline
        checked: list[tuple[str, SeqWaiter]] = []  # sequences whose job's status this round trip reads
        try:
            # MULTI: a delta and the `streamed` mark reach Redis together or not at all.
            with self.client.pipeline(transaction=True) as pipe:
                replies: dict[str, list[str]] = {}  # reply channel -> this step's events for it, in order
                for out in outputs:
                    self._send(pipe, self._waiters[out.seq.id], out, replies)
                for channel, events in replies.items():  # one message per front, not one per stream
                    pipe.publish(channel, reply_message(events))
                for out in outputs:
                    end = self._waiters[out.seq.id].end if out.finished else None
                    if end is not None and not end.tried and end.ended():
                        end.tried = True
                        at = len(pipe)
                        if self._record(end, pipe):
                            ends.append((end, at))
                checked_at = len(pipe)
                checked = self._cancel_check_on(pipe, {out.seq.id for out in outputs if out.finished})
                results = pipe.execute(raise_on_error=False)
            failed = next((r for r in results if isinstance(r, Exception)), None)
            if failed is not None:
                log.warning("a step's write failed in part: %s", failed)
            for end, at in ends:
                end.recorded = not isinstance(results[at], Exception)
                if end.recorded and results[at] not in (b"ok", "ok"):  # it had ended meanwhile (a cancel)
                    log.debug("job %s was already %s", end.waiters[0].job_id if end.waiters else "?", results[at])
            self._abort_ended(checked, results[checked_at:checked_at + len(checked)])
        except redis.RedisError as e:
            log.warning("could not publish deltas: %s", e)
            self._abort_ended(checked, [])
        for out in outputs:
            if out.finished:
                waiter = self._waiters.pop(out.seq.id)
                waiter.ended_at = stepped
                waiter.done.set()

    @staticmethod
    def _record(end: JobEnd, pipe: Any) -> bool:
        try:
            return end.record(end, pipe)
        except Exception:  # noqa: BLE001 - its pool thread records it (and reports what went wrong)
            log.exception("could not build a job's final record on the engine thread")
            return False

    def _send(self, pipe: Any, waiter: SeqWaiter, out: Any, replies: dict[str, list[str]]) -> None:
        """One sequence's step: its events added to its reply channel's list in ``replies`` (which
        the step publishes), the `streamed` mark and the kept events queued on the pipeline; a
        thought's text and the answer's text are events of their own."""
        if not (waiter.reply_to or waiter.keep_ttl):
            return
        thought, delta = waiter.filter(out.delta, out.finished) if waiter.filter else ("", out.delta)
        events = _delta_events(waiter, thought, delta, out.logprobs) if delta or thought or out.logprobs else []
        if waiter.reply_to and events:
            replies.setdefault(waiter.reply_to, []).extend(e.model_dump_json(exclude_defaults=True) for e in events)
            if not waiter.streamed:
                waiter.streamed = True  # from now on a dead worker fails it (tasks/worker/reaper.py)
                pipe.hset(job_key(waiter.job_id), "streamed", 1)
        if waiter.keep_ttl and (events or out.finished):
            for i, kept in enumerate(events or [None]):
                self._keep(pipe, waiter, kept, out.finished and i == max(len(events), 1) - 1)

    @staticmethod
    def _keep(pipe: Any, waiter: SeqWaiter, event: Event | None, finished: bool) -> None:
        """One entry in the job's stream: the delta (tagged with its attempt, so that the front can
        tell a redelivered run's events from a dead one's) and whether the sequence ended. Not
        marked `streamed`: kept events are not yet seen; the front marks what it shows (ACCEPT_LUA)."""
        fields: dict[str, Any] = {"a": waiter.attempt}
        if event is not None:
            fields["e"] = event.model_dump_json(exclude_defaults=True, exclude={"job"})
        if finished:
            fields["end"] = 1
        key = events_key(waiter.job_id)
        pipe.xadd(key, fields, maxlen=EVENTS_MAXLEN, approximate=True)
        pipe.expire(key, waiter.keep_ttl)  # every time: a stream deleted meanwhile must not come back forever

    def _check_cancelled(self) -> None:
        """Before a step, when a check is due and the last step's round trip did not make it: read
        the status of every running sequence's job in a round trip of its own."""
        if not self._cancel_check_due():
            return
        with self.client.pipeline(transaction=False) as pipe:
            checked = self._cancel_check_on(pipe)
            try:
                statuses = pipe.execute()
            except redis.RedisError:
                statuses = []  # cannot tell now; the deadlines still bound the work
        self._abort_ended(checked, statuses)

    def _cancel_check_on(self, pipe: Any, ending: set[str] | frozenset[str] = frozenset()) -> list[tuple[str, SeqWaiter]]:
        """When a check is due (every CANCEL_CHECK_SECONDS), queue on ``pipe`` a read of the status
        of each running sequence's job (those in ``ending`` left out): a step's own round trip
        carries it, so that a busy engine pays no round trip of its own for it. The sequences
        read, in order, for :meth:`_abort_ended`; none when no check is due."""
        if not self._cancel_check_due():
            return []
        self._last_cancel_check = time.monotonic()
        items = [(seq_id, waiter) for seq_id, waiter in self._waiters.items() if seq_id not in ending]
        for _, waiter in items:
            pipe.hget(job_key(waiter.job_id), "status")
        return items

    def _cancel_check_due(self) -> bool:
        return bool(self._waiters) and time.monotonic() - self._last_cancel_check >= CANCEL_CHECK_SECONDS

    def _abort_ended(self, checked: list[tuple[str, SeqWaiter]], statuses: list[Any]) -> None:
        """Abort the sequences whose job is no longer running (cancelled, ended) or whose deadline
        passed. A status that could not be read (missing: Redis failed; an error in its place)
        counts as running: the deadline still bounds the work."""
        wall = time.time()
        for i, (seq_id, waiter) in enumerate(checked):
            status = statuses[i] if i < len(statuses) else b"running"
            if isinstance(status, Exception):
                status = b"running"
            if status != b"running" or wall > waiter.deadline:
                self.engine.abort(seq_id)


def _delta_events(waiter: SeqWaiter, thought: str, text: str, logprobs: list | None) -> list[Event]:
    """One step's thought and answer text, an event each; the tokens' logprobs go with the answer
    part (with the thought when the step has no answer text)."""
    events = []
    if thought:
        events.append(Event(type="delta", job=waiter.job_id, index=waiter.index, reasoning=thought,
                            logprobs=None if text else logprobs or None))
    if text or not thought:
        events.append(Event(type="delta", job=waiter.job_id, index=waiter.index, text=text, logprobs=logprobs or None))
    return events
