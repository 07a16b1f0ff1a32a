"""Mistral v0.3 instruct: ``[INST] … [/INST]`` turns, no system role, strict user/assistant order.

Tools: ``[AVAILABLE_TOOLS] [...][/AVAILABLE_TOOLS]`` before the last user ``[INST]``; calls as
``[TOOL_CALLS] [{"name": ..., "arguments": {...}, "id": ...}]``; results as
``[TOOL_RESULTS] {"content": ..., "call_id": ...}[/TOOL_RESULTS]``; call ids are 9 alphanumerics.
``[TOOL_CALLS]`` is a special token, so decoded text shows a call as a leading JSON array.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from tasks.contract.errors import invalid_request
from tasks.contract.payloads import Message, ToolCall

from .base import ChatHandler
from .tools import (
    alnum9_call_id,
    arguments_object,
    as_alnum9,
    content_before,
    decode_json,
    dumps,
    forced_schema,
    hf_tools,
    make_call,
)

TOOL_CALLS = "[TOOL_CALLS]"


def fold_system(messages: Sequence[Message]) -> list[Message]:
    """Mistral has no system turn: its text goes in front of the first user message."""
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    rest = [m for m in messages if m.role != "system"]
    if system and rest and rest[0].role == "user":
        rest[0] = Message(role="user", content=f"{system}\n\n{rest[0].content}")
    return rest


def _tool_step(m: Message) -> bool:
    """Calls and results sit outside the user/assistant alternation."""
    return m.role == "tool" or bool(m.role == "assistant" and m.tool_calls)


class MistralHandler(ChatHandler):
    family = "mistral"
    stop_tokens = ("</s>",)
    tool_markers = (TOOL_CALLS,)
    tool_start_markers = ("[",)  # the special token is not in decoded text: a leading array is a call

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
        turns = [m for m in messages if m.role != "system" and not _tool_step(m)]
        for i, m in enumerate(turns):
            expected = "user" if i % 2 == 0 else "assistant"
            if m.role != expected:
                raise invalid_request(
                    "Mistral models need conversation roles to alternate user/assistant/user/… starting with user; "
                    f"turn {i} is `{m.role}` where `{expected}` was expected.", param="messages")
        if not turns or messages[-1].role not in ("user", "tool"):
            raise invalid_request("Mistral models need the last message to be from the user (or a tool result).",
                                  param="messages")

    def builtin_template(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None,
                         options: Mapping[str, Any] | None = None) -> str:
        msgs = fold_system(messages)
        last_user = max((i for i, m in enumerate(msgs) if m.role == "user"), default=-1) if tools else -1
        out = "<s>"
        for i, m in enumerate(msgs):
            if m.role == "user":
                if i == last_user:
                    out += "[AVAILABLE_TOOLS] " + dumps(hf_tools(tools or [])) + "[/AVAILABLE_TOOLS]"
                out += f"[INST] {m.content}[/INST]"
            elif m.role == "assistant" and m.tool_calls:
                out += TOOL_CALLS + " [" + ", ".join(
                    dumps({"name": c.name, "arguments": arguments_object(c.arguments)})[:-1]
                    + ', "id": "' + as_alnum9(c.id) + '"}' for c in m.tool_calls) + "]</s>"
            elif m.role == "tool":
                out += ('[TOOL_RESULTS] {"content": ' + m.content + ', "call_id": "' + as_alnum9(m.tool_call_id or "")
                        + '"}[/TOOL_RESULTS]')
            else:
                out += f"{m.content}</s>"
        return out

    def new_tool_call_id(self) -> str:
        return alnum9_call_id()

    def tool_prefill(self) -> str:
        return TOOL_CALLS

    def forced_call_schema(self, tools: Sequence[dict[str, Any]], choice: str | dict[str, Any]) -> dict[str, Any]:
        return {"type": "array", "items": forced_schema(tools, choice), "minItems": 1, "maxItems": 1}

    def parse_tool_calls(self, text: str) -> tuple[str | None, list[ToolCall]]:
        at = text.find(TOOL_CALLS)
        if at >= 0:
            content, start = content_before(text, at), at + len(TOOL_CALLS)
        elif text.lstrip().startswith("["):
            content, start = None, 0
        else:
            return text, []
        got = decode_json(text, start)
        if got is None or not isinstance(got[0], list) or not got[0]:
            return text, []
        calls = []
        for obj in got[0]:
            call = make_call(obj, ("arguments", "parameters"), self.new_tool_call_id)
            if call is None:
                return text, []
            given = obj.get("id")
            if isinstance(given, str) and as_alnum9(given) == given:
                call.id = given
            calls.append(call)
        return content, calls
