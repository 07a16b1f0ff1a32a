"""The typed events of one job, as the front's translators read them.

The worker publishes :class:`tasks.contract.payloads.Event`, the wire shape; the job's
:class:`~tasks.queue.client.JobWatch` turns each into one of these, the final result already
validated into its type. A job's stream is ``TextDelta*`` (and, from a reasoning model,
``ReasoningDelta``s: its thought, apart from the answer) then one ``Finished`` or ``Failed``.

Translators (OpenAI SSE, the legacy stream, a sync answer) match on these and end with
``assert_never``: a tool-call or reasoning delta added to ``JobEvent`` later makes mypy name every
translator that does not handle it yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Optional, Protocol, TypeVar, Union

from tasks.contract.errors import JobError
from tasks.contract.payloads import TASK_EMBED, TASK_GENERATE, EmbedResult, Event, GenerateResult, TokenLogprob

# What a job ends with, by task: tokenize (and initialize) answer a plain dict.
Result = Union[GenerateResult, EmbedResult, dict[str, Any]]
R = TypeVar("R", bound=Result)


@dataclass(frozen=True, slots=True)
class TextDelta:
    """New text of choice ``index`` (with its tokens' logprobs when asked for)."""

    index: int
    text: str
    logprobs: Optional[list[TokenLogprob]] = None


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """New thought of choice ``index`` (a reasoning model's ``reasoning_content``), never answer text."""

    index: int
    text: str
    logprobs: Optional[list[TokenLogprob]] = None


@dataclass(frozen=True)  # no slots: frozen + slots + Generic breaks ``Finished[X](...)`` on 3.11
class Finished(Generic[R]):
    """The job succeeded: its result, validated."""

    result: R


@dataclass(frozen=True, slots=True)
class Failed:
    """The job failed, was cancelled, timed out or lost its worker."""

    error: JobError


JobEvent = Union[TextDelta, ReasoningDelta, Finished[R], Failed]


def delta_of(wire: Event) -> Union[TextDelta, ReasoningDelta]:
    """A wire ``delta`` event as its typed event (each carries answer text or a thought, not both)."""
    if wire.reasoning:
        return ReasoningDelta(wire.index, wire.reasoning, wire.logprobs)
    return TextDelta(wire.index, wire.text, wire.logprobs)


class JobObserver(Protocol):
    """Told by a job's watch what happened to it: each delta, then exactly one outcome."""

    def delta(self, index: int) -> None: ...

    def succeeded(self, result: Result) -> None: ...

    def failed(self, error: JobError) -> None: ...

    def cancelled(self) -> None: ...


class NoObserver:
    def delta(self, index: int) -> None:
        pass

    def succeeded(self, result: Result) -> None:
        pass

    def failed(self, error: JobError) -> None:
        pass

    def cancelled(self) -> None:
        pass


def parse_result(task: str, raw: Optional[dict[str, Any]]) -> Result:
    """A job's raw result (from its ``done`` event or its record) as the type of its task."""
    if task == TASK_GENERATE:
        return GenerateResult.model_validate(raw or {})
    if task == TASK_EMBED:
        return EmbedResult.model_validate(raw or {})
    return dict(raw or {})
