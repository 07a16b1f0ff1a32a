"""The worker's class gate (tasks/worker/gate.py): which queues it stops and starts consuming, and
in what order, as jobs of each class group come and go. Celery's consumer is recorded, not run: the
queue switching itself runs for real in tests/test_e2e_durability.py and test_e2e_worker_move.py."""

from __future__ import annotations

from tasks.worker.gate import ClassGate

M = "acme/x"
INTERACTIVE, BACKGROUND, BATCH = f"llmhost.model.{M}", f"llmhost.model.{M}.background", f"llmhost.model.{M}.batch"


class Recorder:
    def __init__(self, run_later: bool = False) -> None:
        self.calls: list[tuple[str, str]] = []
        self.consuming = [INTERACTIVE, BACKGROUND, BATCH]
        self.later: list = []
        self.run_later = run_later
        self.task_consumer = self

    def call_soon(self, fn, *args):  # noqa: ANN001 - Celery's signature
        if self.run_later:
            self.later.append((fn, args))
        else:
            fn(*args)

    def consuming_from(self, q: str) -> bool:
        return q in self.consuming

    @property
    def queues(self) -> list:
        return [type("Q", (), {"name": q}) for q in self.consuming]

    def cancel_task_queue(self, q: str) -> None:
        self.calls.append(("cancel", q))
        self.consuming.remove(q)

    def add_task_queue(self, q: str) -> None:
        self.calls.append(("add", q))
        self.consuming.append(q)


def test_a_full_group_stops_being_consumed_until_one_of_its_jobs_ends():
    gate, c = ClassGate(M, cap=2), Recorder()
    gate.attach(c)
    with gate.slot("background"):
        with gate.slot("batch"):
            assert c.consuming == [INTERACTIVE]  # bulk full: only interactive work is taken
            with gate.slot("interactive"):
                assert c.consuming == [INTERACTIVE]
        assert c.consuming == [INTERACTIVE, BACKGROUND, BATCH]
    assert gate.held() == {"interactive": 0, "bulk": 0}


def test_a_resumed_interactive_queue_comes_back_first():
    gate, c = ClassGate(M, cap=1), Recorder()
    gate.attach(c)
    with gate.slot("interactive"):
        assert c.consuming == [BACKGROUND, BATCH]
    # kombu BRPOPs in the order queues were added: interactive must lead again.
    assert c.consuming == [INTERACTIVE, BACKGROUND, BATCH]


def test_no_cap_no_switching():
    gate, c = ClassGate(M, cap=0), Recorder()
    gate.attach(c)
    with gate.slot("background"), gate.slot("interactive"):
        pass
    assert c.calls == []


def test_callbacks_run_in_any_order_still_leave_the_queues_right():
    """Celery does not keep call_soon's order: however the scheduled syncs run, the consumer ends
    consuming exactly what the gate wants, interactive first (a cancel after its add once left a
    worker deaf)."""
    import random

    for seed in range(20):
        gate, c = ClassGate(M, cap=1), Recorder(run_later=True)
        gate.attach(c)
        with gate.slot("interactive"):
            with gate.slot("background"):
                pass
        random.Random(seed).shuffle(c.later)
        for fn, args in c.later:
            fn(*args)
        assert c.consuming == [INTERACTIVE, BACKGROUND, BATCH], seed
