"""Which sequences run next: the waiting queue and the admission policy of the engine.

Each step is a prefill of the sequences :meth:`Scheduler.schedule` admits, or, when it admits none,
a decode of the running batch. Admission takes waiting sequences in arrival order while they fit:

* the batch holds at most ``max_batch`` rows, and the KV cache at most ``max_batch_tokens`` tokens
  (a lone sequence is always admitted, however long);
* one prefill takes at most ``max_prefill_tokens`` prompt tokens (the rest go in the next one), and a
  sequence that asks for its prompt's logprobs is prefilled alone (it needs logits at every position);
* never two prefills in a row while sequences are running: a burst of arrivals cannot starve the
  running streams, and a new arrival still gets its first token after at most one decode.

A sequence that does not fit stops admission for this step (it keeps its place: long prompts are
not overtaken forever).
"""

from __future__ import annotations

from collections import deque

from .sequence import Sequence


class Scheduler:
    def __init__(self, max_batch: int, max_batch_tokens: int, max_prefill_tokens: int) -> None:
        self.max_batch = max(1, max_batch)
        self.max_batch_tokens = max_batch_tokens
        self.max_prefill_tokens = max_prefill_tokens
        self.running: list[Sequence] = []  # row i of the batch ↔ running[i]
        self._queue: deque[Sequence] = deque()  # waiting sequences, oldest first
        self._prefilled_last = False

    @property
    def waiting(self) -> list[Sequence]:
        """Waiting sequences in admission order."""
        return list(self._queue)

    def add(self, seq: Sequence) -> None:
        self._queue.append(seq)

    def has_work(self) -> bool:
        return bool(self.running or self._queue)

    def schedule(self, kv_tokens: int) -> list[Sequence]:
        """The sequences to prefill now, marked running; empty: decode the running batch."""
        admitted = [] if (self._prefilled_last and self.running) else self._admit(kv_tokens)
        self._prefilled_last = bool(admitted)
        for seq in admitted:
            self._queue.remove(seq)
            seq.start()
        return admitted

    def _admit(self, kv_tokens: int) -> list[Sequence]:
        admitted: list[Sequence] = []
        tokens, chunk = kv_tokens, 0
        for seq in self.waiting:
            if len(self.running) + len(admitted) >= self.max_batch:
                break
            need = len(seq.prompt_ids)
            if seq.params.prompt_logprobs is not None:
                if not admitted:  # it needs logits at every prompt position: prefilled alone
                    admitted.append(seq)
                break
            if admitted and chunk + need > self.max_prefill_tokens:
                break  # the rest go in the next prefill
            if (self.running or admitted) and tokens + need > self.max_batch_tokens:
                break  # wait for room; a lone sequence is always admitted
            admitted.append(seq)
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
            self._queue.remove(seq)
        return gone
