"""Gemma 2 and 3: ``<start_of_turn>user|model`` … ``<end_of_turn>`` turns after one BOS, strict
user/model alternation, no system role (its text opens the first user turn).

Gemma has no tool tokens; tools follow Google's documented prompt ("Function calling with Gemma",
its JSON variant, chosen because a forced call is then plain JSON under the grammar): the
instructions and function specs open the first user turn, a call is the whole answer
``{"name": ..., "parameters": {...}}`` (several: a JSON list), results come back in a user turn as
```` ```tool_output ```` blocks.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from tasks.contract.errors import invalid_request
from tasks.contract.payloads import Message, ToolCall

from .base import ChatHandler
from .tools import arguments_object, decode_json, dumps, make_call

TOOLS_PREAMBLE = ("You have access to functions. If you decide to invoke any of the function(s), you MUST put it in "
                  'the format of\n{"name": function name, "parameters": dictionary of argument name and its value}\n\n'
                  "You SHOULD NOT include any other text in the response if you call a function\n")
_FENCE = re.compile(r"\A```(?:json|tool_code)[ \t]*\n?(.*?)(?:\n?```)?\s*\Z", re.S)


def _call_json(call: ToolCall) -> str:
    return dumps({"name": call.name, "parameters": arguments_object(call.arguments)})


class GemmaHandler(ChatHandler):
    family = "gemma"
    stop_tokens = ("<end_of_turn>", "<eos>")
    tool_markers = ()
    tool_start_markers = ("{", "[", "```json", "```tool_code")
    tool_args_key = "parameters"

    def turns(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None) -> list[tuple[str, str]]:
        """(role, text) turns: system text and the tools prompt open the first user turn, calls are
        model turns, consecutive results share one user turn."""
        system = "\n\n".join(m.content for m in messages if m.role == "system")
        prefix = (system + "\n\n" if system else "") + (TOOLS_PREAMBLE + dumps(list(tools), indent=2) + "\n\n" if tools else "")
        out: list[tuple[str, str]] = []
        for m in (m for m in messages if m.role != "system"):
            if m.role == "tool":
                block = "```tool_output\n" + m.content + "\n```"
                if out and out[-1][0] == "tool":
                    out[-1] = ("tool", out[-1][1] + "\n" + block)
                else:
                    out.append(("tool", block))
            elif m.role == "assistant":
                calls = "\n".join(_call_json(c) for c in m.tool_calls or ())
                out.append(("model", "\n".join(p for p in (m.content.strip(), calls) if p)))
            else:
                out.append(("user", (prefix if not out else "") + m.content.strip()))
        return [("user" if role == "tool" else role, text) for role, text in out]

    def validate_messages(self, messages: Sequence[Message]) -> None:
        super().validate_messages(messages)
        seen_other = False
        for i, m in enumerate(messages):
            if m.role == "system" and seen_other:
                raise invalid_request(f"Gemma models take system text only before the conversation; messages[{i}] is "
                                      "a system message after it started.", param="messages")
            seen_other = seen_other or m.role != "system"
        roles = [role for role, _ in self.turns(messages)]
        for i, role in enumerate(roles):
            expected = "user" if i % 2 == 0 else "model"
            if role != expected:
                raise invalid_request("Gemma models need conversation roles to alternate user/assistant/user/… "
                                      f"starting with user; turn {i} is `{role}` where `{expected}` was expected.",
                                      param="messages")
        if not roles or roles[-1] != "user":
            raise invalid_request("Gemma models need the last message to be from the user (or a tool result).",
                                  param="messages")

    def builtin_template(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None,
                         options: Mapping[str, Any] | None = None) -> str:
        body = "".join(f"<start_of_turn>{role}\n{text}<end_of_turn>\n" for role, text in self.turns(messages, tools))
        return "<bos>" + body + "<start_of_turn>model\n"

    def tool_prefill(self) -> str:
        return ""  # a call is the whole answer: the grammar starts at its first brace

    def parse_tool_calls(self, text: str) -> tuple[str | None, list[ToolCall]]:
        body = text.strip()
        if fenced := _FENCE.match(body):
            body = fenced.group(1).strip()
        if not body.startswith(("{", "[")):
            return text, []
        objects, at = [], 0
        while at < len(body):
            got = decode_json(body, at)
            if got is None:
                return text, []
            objects += got[0] if isinstance(got[0], list) else [got[0]]
            at = got[1]
            while at < len(body) and (body[at].isspace() or body[at] == ";"):
                at += 1
        calls = [make_call(o, ("parameters", "arguments"), self.new_tool_call_id) for o in objects]
        if not calls or any(c is None for c in calls):
            return text, []
        return None, [c for c in calls if c is not None]
