"""ChatML: SmolLM2, Qwen 1.5–3, and others that speak ``<|im_start|>role … <|im_end|>``."""

from __future__ import annotations

from typing import Sequence

from tasks.payloads import Message

from .base import ChatHandler


class ChatMLHandler(ChatHandler):
    family = "chatml"
    stop_tokens = ("<|im_end|>", "<|endoftext|>")

    def builtin_template(self, messages: Sequence[Message]) -> str:
        turns = "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages)
        return turns + "<|im_start|>assistant\n"
