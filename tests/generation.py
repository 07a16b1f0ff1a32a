"""One sequence generated alone, in-process (tests): iterate it for text deltas, then read how it
ended. It runs on the same engine as the worker's batches, with a batch of one."""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

from handlers.engine import Engine
from tasks.contract.payloads import SamplingParams


class Generation:
    def __init__(self, handler, prompt_ids: Sequence[int], params: SamplingParams, max_tokens: int,
                 is_cancelled: Callable[[], bool] = lambda: False) -> None:
        self._engine = Engine(handler, max_batch=1)
        self._seq = self._engine.add("single", list(prompt_ids), params, max_tokens)
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
