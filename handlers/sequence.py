"""One request's generation inside the engine: its prompt, parameters, status and what it produced.

A sequence goes WAITING (queued in the scheduler) → RUNNING (holds a row of the batch) → FINISHED,
with the reason it ended: ``"stop"`` (a stop token or stop string), ``"length"`` (``max_tokens``) or
``"cancelled"`` (aborted; the engine drops it at its next step). The engine changes a sequence only
through the methods below, so the bookkeeping of tokens, text and logprobs lives in one place.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass
from typing import Any, Collection

import torch

from tasks.contract.payloads import SamplingParams, TokenLogprob

from .sampling import make_generator
from .text import Decode, IncrementalDecoder, StopMatcher

_DECODE_CONTEXT = 4  # prompt tokens that give the first generated token its left context

# Priority classes of :meth:`handlers.engine.Engine.add`: lower is admitted first.
INTERACTIVE, BACKGROUND, BATCH = 0, 1, 2


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    def __init__(self, seq_id: str, prompt_ids: list[int], params: SamplingParams, max_tokens: int, *,
                 decode: Decode, device: torch.device, matcher: Any = None,
                 priority: int = INTERACTIVE) -> None:
        self.id = seq_id
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.max_tokens = max_tokens
        self.priority = priority
        self.matcher = matcher  # structured output (handlers/constraints.py), None when unconstrained
        self.generator = make_generator(params, device)
        self.token_ids: list[int] = []
        self.output_counts: Counter[int] = Counter()  # for presence/frequency penalties
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        self.prompt_logprobs: list[TokenLogprob] | None = None  # set by a prefill that echoes the prompt
        self._decoder = IncrementalDecoder(decode, self.prompt_ids[-_DECODE_CONTEXT:])
        self._stops = StopMatcher(params.stop)
        self._status = SeqStatus.WAITING
        self._finish_reason: str | None = None
        self._cancelling = False
        self._next_logprob: TokenLogprob | None = None  # of the sampled token, until it is accepted
        self._unsent_logprobs: list[TokenLogprob] = []  # accepted, not yet handed out with a delta

    def __repr__(self) -> str:
        return f"Sequence({self.id!r}, {self._status.value}, {len(self.token_ids)} tokens)"

    # --- what the worker reads -------------------------------------------------------------------

    @property
    def status(self) -> SeqStatus:
        return self._status

    @property
    def finish_reason(self) -> str | None:
        return self._finish_reason

    @property
    def finished(self) -> bool:
        return self._status is SeqStatus.FINISHED

    @property
    def text(self) -> str:
        return self._stops.text

    @property
    def stop_sequence(self) -> str | None:
        """The request's stop string that ended the text, if one did."""
        return self._stops.matched

    @property
    def cancelling(self) -> bool:
        """Aborted, and not yet dropped by the engine."""
        return self._cancelling and not self.finished

    # --- what the engine does to it ---------------------------------------------------------------

    def cancel(self) -> None:
        self._cancelling = True

    def start(self) -> None:
        """Admitted into the batch."""
        self._status = SeqStatus.RUNNING

    def finish(self, reason: str) -> None:
        self._status, self._finish_reason = SeqStatus.FINISHED, reason

    def note_logprob(self, entry: TokenLogprob) -> None:
        """The sampler's logprob of the token it just chose for this sequence."""
        self._next_logprob = entry

    def accept(self, token: int, eos_ids: Collection[int]) -> str:
        """Take the sampled token; return the text that can be shown now. A stop token ends the
        sequence without becoming part of it; so does reaching a stop string or ``max_tokens``."""
        p = self.params
        delta, reason = "", None
        if token in p.stop_token_ids or (token in eos_ids and not p.ignore_eos):
            reason = "stop"
        else:
            self.token_ids.append(token)
            self.output_counts[token] += 1
            if self.matcher is not None:
                self.matcher.accept(token)
            if self.logprobs is not None and self._next_logprob is not None:
                self.logprobs.append(self._next_logprob)
                self._unsent_logprobs.append(self._next_logprob)
            delta = self._stops.feed(self._decoder.push(token))
            if self._stops.stopped:
                reason = "stop"
            elif len(self.token_ids) >= self.max_tokens:
                reason = "length"
        self._next_logprob = None
        if reason:
            delta += self._stops.flush()
            self.finish(reason)
        return delta

    def take_logprobs(self) -> list[TokenLogprob] | None:
        """The logprobs of the tokens whose text goes out with this delta (None: not asked for)."""
        if self.logprobs is None:
            return None
        taken, self._unsent_logprobs = self._unsent_logprobs, []
        return taken


@dataclass
class StepOutput:
    seq: Sequence
    delta: str
    finished: bool
    logprobs: list[TokenLogprob] | None = None  # of the tokens behind ``delta``
