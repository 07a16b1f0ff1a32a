"""One sequence generated alone, in-process (tests, benchmarks): the same engine as the worker's
batches, with a batch of one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator

from tasks.contract.payloads import SamplingParams

from .engine import Engine

if TYPE_CHECKING:
    from .base import ChatHandler


class Generation:
    """Iterate it for text deltas, then read how it ended."""

    def __init__(self, handler: "ChatHandler", prompt_ids: list[int], params: SamplingParams, max_tokens: int,
                 is_cancelled: Callable[[], bool], grammar: object = None) -> None:
        self._engine = Engine(handler, max_batch=1)
        self._seq = self._engine.add("single", prompt_ids, params, max_tokens, grammar)
        self.is_cancelled = is_cancelled

    @property
    def text(self) -> str:
        return self._seq.text

    @property
    def token_ids(self) -> list[int]:
        return self._seq.token_ids

    @property
    def completion_tokens(self) -> int:
        return len(self._seq.token_ids)

    @property
    def finish_reason(self) -> str:
        return self._seq.finish_reason or "length"

    def __iter__(self) -> Iterator[str]:
        while self._engine.has_work():
            if self.is_cancelled():
                self._engine.abort(self._seq.id)
            for out in self._engine.step():
                if out.delta:
                    yield out.delta
