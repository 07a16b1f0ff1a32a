"""Qwen 2.5: ChatML, a system turn always (the client's, else Qwen's default), Hermes tool calls.

The tool prompt, calls (``<tool_call>`` blocks) and results (``<tool_response>`` in a user turn)
are the format ``chatml.py`` writes, which Qwen 2.5's template defined; what is Qwen 2.5's own is
the default system prompt, also in front of the tools block.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from tasks.contract.payloads import Message

from .chatml import ChatMLHandler

DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


class Qwen25Handler(ChatMLHandler):
    family = "qwen2.5"
    kept_tokens = ("<tool_call>", "</tool_call>")

    def builtin_template(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None,
                         options: Mapping[str, Any] | None = None) -> str:
        if not messages or messages[0].role != "system":
            messages = [Message(role="system", content=DEFAULT_SYSTEM), *messages]
        return super().builtin_template(messages, tools, options)
