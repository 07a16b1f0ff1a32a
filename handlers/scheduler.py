"""Which sequences run next: the waiting queue and the admission policy of the engine.

Each step is a prefill of the sequences :meth:`Scheduler.schedule` admits, or, when it admits none,
a decode of the running batch. Admission takes waiting sequences in (priority, arrival) order while
they fit:

* the batch holds at most ``max_batch`` rows, and the KV cache at most ``max_batch_tokens`` tokens
  (a lone sequence is always admitted, however long);
* one prefill takes at most ``max_prefill_tokens`` prompt tokens (the rest go in the next one), and a
  sequence that asks for its prompt's logprobs is prefilled alone (it needs logits at every position);
  a longer prompt is admitted alone, and the engine prefills it in chunks of that budget
  (:mod:`handlers.chunked_prefill`); while it does (``held``), it counts as a row and as its tokens,
  and the next prompt that long waits for it;
* never two prefills in a row while sequences are running: a burst of arrivals cannot starve the
  running streams, and a new arrival still gets its first token after at most one decode (where
  the engine decodes the running rows in the prefill's own pass, nobody waits: no such rule);
* with ``reserved_slots`` > 0, the lower classes (priority ≥ 1) together hold at most ``max_batch -
  reserved_slots`` rows, so a batch full of background work always has a row for the next
  interactive request (no preemption needed); interactive sequences (priority 0) hold as many
  while bulk work waits, so a saturated interactive load still leaves ``reserved_slots`` rows to
  it, and every row when none waits (at 32 streams with no bulk work, a hard cap of 28 rows left
  4 requests queued behind a batch with free rows).

A sequence that does not fit stops admission for this step (it keeps its place: long prompts are
not overtaken forever), except one whose class holds all the rows it may: the next class can use
a free row.
"""

from __future__ import annotations

from collections import deque

from .sequence import INTERACTIVE, Sequence


def _row_class(seq: Sequence) -> int:
    """0: interactive, 1: every lower priority (they share one row cap)."""
    return 0 if seq.priority == INTERACTIVE else 1


class Scheduler:
    def __init__(self, max_batch: int, max_batch_tokens: int, max_prefill_tokens: int,
                 reserved_slots: int = 0) -> None:
        self.max_batch = max(1, max_batch)
        if not 0 <= reserved_slots < self.max_batch:
            raise ValueError(f"reserved_slots must be at least 0 and below max_batch ({self.max_batch}), "
                             f"got {reserved_slots}")
        self.max_batch_tokens = max_batch_tokens
        self.max_prefill_tokens = max_prefill_tokens
        self.class_rows = self.max_batch - reserved_slots  # bulk work's row cap (interactive's while bulk waits)
        self.running: list[Sequence] = []  # row i of the batch ↔ running[i]
        self._queues: dict[int, deque[Sequence]] = {}  # priority → waiting sequences, oldest first
        self._prefilled_last = False

    @property
    def waiting(self) -> list[Sequence]:
        """Waiting sequences in admission order."""
        return [seq for priority in sorted(self._queues) for seq in self._queues[priority]]

    def add(self, seq: Sequence) -> None:
        self._queues.setdefault(seq.priority, deque()).append(seq)

    def has_work(self) -> bool:
        return bool(self.running) or any(self._queues.values())

    def schedule(self, kv_tokens: int, mixed: bool = False, held: list[Sequence] | None = None) -> list[Sequence]:
        """The sequences to prefill now, marked running; empty: decode the running batch.
        ``mixed``: the engine advances the running rows in the same pass as it prefills (all but a
        prompt that wants its logprobs): such a prefill stalls nobody and may follow another.
        ``held``: sequences in no row yet that will take one (a prompt being prefilled in chunks);
        ``kv_tokens`` counts their tokens."""
        admitted = [] if (self._prefilled_last and self.running) else self._admit(kv_tokens, held or [])
        self._prefilled_last = bool(admitted) and not (mixed and admitted[0].params.prompt_logprobs is None)
        for seq in admitted:
            self._queues[seq.priority].remove(seq)
            seq.start()
        return admitted

    def after_prefill(self) -> None:
        """A prefill the running rows did not advance in (a chunk of a long prompt) just ran: the
        next schedule decodes them."""
        self._prefilled_last = True

    def _admit(self, kv_tokens: int, held: list[Sequence]) -> list[Sequence]:
        admitted: list[Sequence] = []
        rows = [0, 0]  # per row class, running, held and admitted
        for seq in (*self.running, *held):
            rows[_row_class(seq)] += 1
        tokens, chunk = kv_tokens, 0
        waiting = self.waiting
        caps = [self.class_rows if any(_row_class(seq) for seq in waiting) else self.max_batch, self.class_rows]
        for seq in waiting:
            if len(self.running) + len(held) + len(admitted) >= self.max_batch:
                break
            cls = _row_class(seq)
            if rows[cls] >= caps[cls]:
                continue  # its class is at its cap; a sequence of the other class may still fit
            need = len(seq.prompt_ids)
            if seq.params.prompt_logprobs is not None:
                if not admitted:  # it needs logits at every prompt position: prefilled alone
                    admitted.append(seq)
                break
            if admitted and chunk + need > self.max_prefill_tokens:
                break  # the rest go in the next prefill
            if held and need > self.max_prefill_tokens:
                continue  # one prompt is prefilled in chunks at a time; shorter ones may pass it
            if (self.running or held or admitted) and tokens + need > self.max_batch_tokens:
                break  # wait for room; a lone sequence is always admitted
            admitted.append(seq)
            rows[cls] += 1
            tokens += need
            chunk += need
        return admitted

    def join(self, seqs: list[Sequence]) -> None:
        """Prefilled sequences take the next rows of the batch."""
        self.running += seqs

    def keep(self, rows: list[int]) -> None:
        """Only rows ``rows`` of the batch go on, in that order."""
        self.running = [self.running[i] for i in rows]

    def drop_cancelled(self) -> list[Sequence]:
        """Remove the cancelled waiting sequences; return them."""
        gone = [seq for seq in self.waiting if seq.cancelling]
        for seq in gone:
            self._queues[seq.priority].remove(seq)
        return gone
