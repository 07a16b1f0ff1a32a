"""Interactive before bulk inside one worker: how many jobs of each class group it holds.

A worker consumes its model's queues in the order interactive, background, batch (strict BRPOP
order, ``queue_order_strategy: priority``), so a free pool thread always takes interactive work
first. But each job holds a pool thread until it ends: 200 queued background jobs would fill every
thread and a new interactive request would wait for one of them to finish. So the pool has room
for ``2 × cap`` jobs, and a group that holds ``cap`` of them stops being consumed (Celery's
``cancel_task_queue``) until one ends (``add_task_queue``): bulk work can never take the threads
that interactive requests need, and a saturated interactive load still leaves bulk its own. Inside
the batch the engine then gives bulk work at most ``max_batch - reserved_slots`` rows, and
interactive work as many while bulk work waits (handlers/scheduler.py).
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from tasks.contract.records import CLASSES, JobClass, queue_name

log = logging.getLogger("llmhost.worker")

GROUPS: dict[str, tuple[JobClass, ...]] = {"interactive": ("interactive",), "bulk": ("background", "batch")}


def group_of(klass: str) -> str:
    return "interactive" if klass == "interactive" else "bulk"


def model_queues(model: str) -> list[str]:
    """The queues a worker of ``model`` consumes, in the order it takes them."""
    return [queue_name(model, k) for k in CLASSES]


class ClassGate:
    def __init__(self, model: str, cap: int) -> None:
        self.model = model
        self.cap = cap  # 0: no gate (one job at a time, or priorities off)
        self._held = {g: 0 for g in GROUPS}
        self._paused: set[str] = set()
        self._consumer: Any = None
        self._lock = threading.RLock()  # _sync may run inline where a consumer calls back at once

    def attach(self, consumer: Any) -> None:
        """Celery's consumer, captured at start (tasks/worker/celery_tasks.py's bootstep)."""
        self._consumer = consumer

    @contextmanager
    def slot(self, klass: str) -> Iterator[None]:
        group = group_of(klass)
        self._change(group, +1)
        try:
            yield
        finally:
            self._change(group, -1)

    def held(self) -> dict[str, int]:
        return dict(self._held)

    def _change(self, group: str, delta: int) -> None:
        if not self.cap:
            return
        with self._lock:
            self._held[group] += delta
            full = self._held[group] >= self.cap
            if full and group not in self._paused:
                self._paused.add(group)
                self._switch(group, pause=True)
            elif not full and group in self._paused:
                self._paused.discard(group)
                self._switch(group, pause=False)

    def resume_all(self) -> None:
        """After a move to another model: the new model's queues are consumed by move_to itself."""
        with self._lock:
            self._paused.clear()

    def _switch(self, group: str, pause: bool) -> None:
        """Ask the consumer to bring its queues in line with the paused groups. Celery runs
        ``call_soon`` callbacks in no guaranteed order, so each callback is the same idempotent
        sync that reads the state when it runs: whatever order they run in, the last one leaves
        the consumer as the gate wants it (a cancel running after its add once left a worker
        consuming nothing)."""
        if self._consumer is not None:
            self._consumer.call_soon(self._sync)
        log.debug("%s %s queues of %s", "paused" if pause else "resumed", group, self.model)

    def _sync(self) -> None:
        """On the consumer's loop: consume exactly the queues of the groups not paused, in class
        order (kombu BRPOPs them in the order they were added, so interactive must come first)."""
        consumer = self._consumer
        with self._lock:
            want = [queue_name(self.model, k) for k in CLASSES if group_of(k) not in self._paused]
        mine = [queue_name(self.model, k) for k in CLASSES]
        now = [q for q in mine if consumer.task_consumer.consuming_from(q)]
        if now == want and self._order_ok(consumer, want):
            return
        for q in now:
            consumer.cancel_task_queue(q)
        for q in want:
            consumer.add_task_queue(q)

    @staticmethod
    def _order_ok(consumer: Any, want: list[str]) -> bool:
        """Whether the consumer's queues are in class order (kombu keeps them in the order added)."""
        order = [q.name for q in getattr(consumer.task_consumer, "queues", [])]
        ranks = [order.index(q) for q in want if q in order]
        return ranks == sorted(ranks)
