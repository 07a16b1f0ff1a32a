"""Mistral v0.3 instruct: ``[INST] … [/INST]`` turns, no system role, strict user/assistant order."""

from __future__ import annotations

from typing import Sequence

from tasks.errors import invalid_request
from tasks.payloads import Message

from .base import ChatHandler


def fold_system(messages: Sequence[Message]) -> list[Message]:
    """Mistral has no system turn: its text goes in front of the first user message."""
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    rest = [m for m in messages if m.role != "system"]
    if system and rest and rest[0].role == "user":
        rest[0] = Message(role="user", content=f"{system}\n\n{rest[0].content}")
    return rest


class MistralHandler(ChatHandler):
    family = "mistral"
    stop_tokens = ("</s>",)

    def validate_messages(self, messages: Sequence[Message]) -> None:
        super().validate_messages(messages)
        seen_other = False
        for i, m in enumerate(messages):
            if m.role == "system":
                if seen_other:
                    raise invalid_request(
                        f"Mistral models take system text only before the conversation; messages[{i}] is a system "
                        "message after it started.", param="messages")
                continue
            seen_other = True
        turns = [m for m in messages if m.role != "system"]
        for i, m in enumerate(turns):
            expected = "user" if i % 2 == 0 else "assistant"
            if m.role != expected:
                raise invalid_request(
                    "Mistral models need conversation roles to alternate user/assistant/user/… starting with user; "
                    f"turn {i} is `{m.role}` where `{expected}` was expected.", param="messages")
        if not turns or turns[-1].role != "user":
            raise invalid_request("Mistral models need the last message to be from the user.", param="messages")

    def builtin_template(self, messages: Sequence[Message]) -> str:
        out = "<s>"
        for m in fold_system(messages):
            out += f"[INST] {m.content}[/INST]" if m.role == "user" else f"{m.content}</s>"
        return out
