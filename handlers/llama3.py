"""Llama 3.x: header tokens around each role, ``<|eot_id|>`` ends a turn, one BOS at the start."""

from __future__ import annotations

from typing import Sequence

from tasks.payloads import Message

from .base import ChatHandler


class Llama3Handler(ChatHandler):
    family = "llama3"
    # <|eom_id|> ends a turn that called a tool (ipython); <|end_of_text|> ends raw text.
    stop_tokens = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")

    def builtin_template(self, messages: Sequence[Message]) -> str:
        turns = "".join(
            f"<|start_header_id|>{m.role}<|end_header_id|>\n\n{m.content.strip()}<|eot_id|>" for m in messages)
        return "<|begin_of_text|>" + turns + "<|start_header_id|>assistant<|end_header_id|>\n\n"
