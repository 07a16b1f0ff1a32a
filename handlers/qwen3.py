"""Qwen 3: ChatML and Hermes tool calls as Qwen 2.5 (without its default system prompt), and a
thought in ``<think>`` … ``</think>`` before the answer.

The model opens ``<think>`` itself. ``enable_thinking: false`` (``chat_template_kwargs``, or
``reasoning_effort: "none"``) closes an empty thought in the prompt, so the answer comes at once.
History keeps no earlier thinking: an assistant turn's text before ``</think>`` is dropped, except
after the last user query (a tool-calling loop), where the turn that ends the conversation is
written with its thought.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from tasks.contract.payloads import Message

from .chatml import ChatMLHandler
from .reasoning import ThinkTags, thinking_off

THINK = ThinkTags("<think>", "</think>")


def _last_query(messages: Sequence[Message]) -> int:
    """Index of the last user message that is not a wrapped tool response."""
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if m.role == "user" and not (m.content.startswith("<tool_response>") and m.content.endswith("</tool_response>")):
            return i
    return len(messages) - 1


def _assistant_text(content: str, after_query: bool, last: bool) -> str:
    """An assistant turn's text as the history shows it: its thought only after the last query,
    when it has one or ends the conversation."""
    reasoning = ""
    if THINK.end in content:
        reasoning = content.split(THINK.end)[0].rstrip("\n").split(THINK.start)[-1].lstrip("\n")
        content = content.split(THINK.end)[-1].lstrip("\n")
    if after_query and (last or reasoning):
        return THINK.start + "\n" + reasoning.strip("\n") + "\n" + THINK.end + "\n\n" + content.lstrip("\n")
    return content


class Qwen3Handler(ChatMLHandler):
    family = "qwen3"
    reasoning_tags = THINK
    kept_tokens = ("<tool_call>", "</tool_call>")

    def template_options(self, kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
        options = dict(kwargs or {})
        if thinking_off(options):
            options["enable_thinking"] = False
        return options

    def builtin_template(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None,
                         options: Mapping[str, Any] | None = None) -> str:
        last_query, shown = _last_query(messages), []
        for i, m in enumerate(messages):
            if m.role == "assistant":
                text = _assistant_text(m.content, i > last_query, i == len(messages) - 1)
                m = m.model_copy(update={"content": text})
            shown.append(m)
        text = super().builtin_template(shown, tools, options)
        return text + f"{THINK.start}\n\n{THINK.end}\n\n" if thinking_off(options or {}) else text
