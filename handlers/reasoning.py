"""Reasoning kept apart from the answer: the thought a model writes between its family's tags
(``<think>`` … ``</think>`` for Qwen 3 and the DeepSeek-R1 distills) is routed to
``reasoning_content``, never to ``content``.

A family declares its tags (:class:`ThinkTags`). For one request, :func:`plan_reasoning` reads the
end of the rendered prompt: when the template opened the tag itself (DeepSeek-R1's does), the output
starts inside the thought; otherwise the model may open it as its first words. The
:class:`ReasoningPlan` then splits a finished text, counts the reasoning tokens, and makes the
stream's splitter. The splitter shows exactly what the final split keeps, as it is generated: it
holds back only a tail that could still become the end tag and whitespace that the split strips
(like the tool-call filter's held-back tail), so a stream never shows half a tag.

The grammar of structured output after the thought lives in ``reasoning_grammar.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from .text import partial_prefix_tail

log = logging.getLogger(__name__)

StreamFilter = Callable[[str, bool], str]


@dataclass(frozen=True)
class ThinkTags:
    start: str = "<think>"
    end: str = "</think>"


@dataclass(frozen=True)
class ReasoningPlan:
    tags: ThinkTags
    inside: bool  # the prompt opened the thought: the output starts inside it

    def split(self, text: str) -> tuple[str | None, str]:
        """(reasoning, answer) of a generated text; reasoning is None when there is none. A text
        cut off inside the thought (``max_tokens``) is all reasoning, with an empty answer."""
        body = text
        if not self.inside:
            stripped = text.lstrip()
            if not stripped.startswith(self.tags.start):
                return None, text
            body = stripped[len(self.tags.start):]
        at = body.find(self.tags.end)
        if at < 0:
            return body.strip(), ""
        return body[:at].strip(), body[at + len(self.tags.end):].lstrip()

    def count_tokens(self, token_ids: Sequence[int], decode: Callable[[Sequence[int]], str]) -> int:
        """Generated tokens spent on the thought, its tags included (``usage.reasoning_tokens``)."""
        text = decode(token_ids)
        if self.split(text)[0] is None:
            return 0
        if self.tags.end not in text:
            return len(token_ids)
        lo, hi = 1, len(token_ids)  # the shortest prefix whose text holds the end tag
        while lo < hi:
            mid = (lo + hi) // 2
            if self.tags.end in decode(token_ids[:mid]):
                hi = mid
            else:
                lo = mid + 1
        return lo

    def splitter(self) -> "ReasoningSplitter":
        return ReasoningSplitter(self)


def plan_reasoning(tags: ThinkTags, prompt_tail: str) -> ReasoningPlan:
    """The plan for a prompt ending in ``prompt_tail`` (its last few tokens, as text)."""
    return ReasoningPlan(tags, inside=prompt_tail.rfind(tags.start) > prompt_tail.rfind(tags.end))


@dataclass
class ReasoningSplitter:
    """Stream splitter, ``(delta, final) -> (reasoning delta, answer delta)``. The pieces of each
    side add up to :meth:`ReasoningPlan.split` of the whole text."""

    plan: ReasoningPlan
    text: str = ""
    body: int | None = None  # where the thought starts (after the start tag); None: not known yet
    decided: bool = False  # known whether the output has a thought
    end_at: int | None = None  # where the end tag starts
    sent_reasoning: int = 0
    sent_answer: int = 0
    _scan: int = field(default=0, repr=False)  # where to look for the end tag next
    _first: int | None = field(default=None, repr=False)  # the thought's first non-space character

    def __post_init__(self) -> None:
        if self.plan.inside:
            self.body, self.decided = 0, True

    def __call__(self, delta: str, final: bool) -> tuple[str, str]:
        self.text += delta
        if final:
            reasoning, answer = self.plan.split(self.text)
            return (reasoning or "")[self.sent_reasoning:], answer[self.sent_answer:]
        if not self.decided and not self._decide():
            return "", ""
        if self.body is None:  # no thought: the text is the answer, as it is
            return "", self._answer(0)
        end = self.plan.tags.end
        if self.end_at is None:
            at = self.text.find(end, max(self.body, self._scan))
            if at < 0:
                held = partial_prefix_tail(self.text, (end,), len(end))
                self._scan = max(self.body, len(self.text) - len(end) + 1)
                return self._reasoning(max(self.body, len(self.text) - held)), ""
            self.end_at = at
        thought = self._reasoning(self.end_at)
        answer_from = self.end_at + len(end)
        while answer_from < len(self.text) and self.text[answer_from].isspace():
            answer_from += 1
        return thought, self._answer(answer_from) if answer_from < len(self.text) else ""

    def _decide(self) -> bool:
        body = self.text.lstrip()
        start = self.plan.tags.start
        if start.startswith(body):  # nothing yet, or what may still become the start tag
            return False
        self.decided = True
        if body.startswith(start):
            self.body = len(self.text) - len(body) + len(start)
        return True

    def _reasoning(self, limit: int) -> str:
        """The new part of ``text[body:limit]`` stripped (the whitespace before the end tag waits)."""
        assert self.body is not None
        if self._first is None:
            first = self.body
            while first < limit and self.text[first].isspace():
                first += 1
            if first == limit:
                return ""
            self._first = first
        upto = limit
        while upto > self._first and self.text[upto - 1].isspace():
            upto -= 1
        shown = self._first + self.sent_reasoning
        if upto <= shown:
            return ""
        self.sent_reasoning = upto - self._first
        return self.text[shown:upto]

    def _answer(self, start: int) -> str:
        shown = start + self.sent_answer
        out = self.text[shown:]
        self.sent_answer += len(out)
        return out


@dataclass
class ChatStreamFilter:
    """What a chat stream shows, ``(delta, final) -> (reasoning, content)``: the thought split off
    first, then call markup kept out of the answer (``tools.ToolCallFilter``)."""

    reasoning: ReasoningSplitter | None = None
    tools: StreamFilter | None = None

    def __call__(self, delta: str, final: bool) -> tuple[str, str]:
        thought, answer = "", delta
        if self.reasoning is not None:
            try:
                thought, answer = self.reasoning(delta, final)
            except Exception:  # noqa: BLE001 - never take the engine thread down
                log.exception("reasoning splitter failed; passing the text through as content")
                self.reasoning = None
        if self.tools is not None:
            answer = self.tools(answer, final)
        return thought, answer


def thinking_off(options: Mapping[str, Any]) -> bool:
    """The request turned the thought off: ``enable_thinking: false`` (vLLM's and Qwen's switch
    in ``chat_template_kwargs``) or, when that is not given, ``reasoning_effort: "none"``."""
    if "enable_thinking" in options:
        return options["enable_thinking"] is False
    return options.get("reasoning_effort") == "none"
