"""Microsoft Phi: ``<|role|>`` … ``<|end|>`` turns.

* Phi-3 / Phi-3.5 (``phi3``): a newline after each role tag and after each ``<|end|>``; no tool
  format (a request with tools is refused with a 400 saying so).
* Phi-4-mini (``phi4``): no newlines; tools as a JSON list inside ``<|tool|>`` … ``<|/tool|>`` in the
  system turn (the model card's format; its template reads them from the system message's
  ``tools``), calls as ``<|tool_call|>{"name": ..., "arguments": {...}}<|/tool_call|>``, results as
  ``<|tool_response|>`` turns. The call tokens are special: they are kept in decoded text so that
  the parser sees them.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from tasks.contract.payloads import Message, ToolCall

from .base import ChatHandler
from .tools import arguments_object, content_before, decode_json, dumps, make_call, uses_tools

CALL_OPEN, CALL_CLOSE = "<|tool_call|>", "<|/tool_call|>"


class Phi3Handler(ChatHandler):
    family = "phi3"
    stop_tokens = ("<|end|>", "<|endoftext|>")
    sep = "\n"  # after a role tag and after <|end|>

    def builtin_template(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None,
                         options: Mapping[str, Any] | None = None) -> str | None:
        if uses_tools(messages, tools):
            return None
        turns = [m for m in messages if m.role != "system" or m.content]
        return "".join(f"<|{m.role}|>{self.sep}{m.content}<|end|>{self.sep}" for m in turns) + f"<|assistant|>{self.sep}"


class Phi4Handler(Phi3Handler):
    family = "phi4"
    sep = ""
    kept_tokens = (CALL_OPEN, CALL_CLOSE)
    tool_markers = (CALL_OPEN,)

    def template_fits(self, template: str, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None) -> bool:
        """Its template takes tools on the system message, but writes no calls or results."""
        history = any(m.role == "tool" or m.tool_calls for m in messages)
        return not history and (not tools or "<|tool|>" in template)

    def template_inputs(self, messages: Sequence[Message],
                        tools: Sequence[dict[str, Any]] | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        shown, _ = super().template_inputs(messages, None)
        if tools:
            if not shown or shown[0]["role"] != "system":
                shown.insert(0, {"role": "system", "content": ""})
            shown[0]["tools"] = dumps(list(tools))
        return shown, {}

    def builtin_template(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None,
                         options: Mapping[str, Any] | None = None) -> str:
        msgs, out = list(messages), ""
        if tools:
            system = msgs.pop(0).content if msgs and msgs[0].role == "system" else ""
            out += "<|system|>" + system + "<|tool|>" + dumps(list(tools)) + "<|/tool|><|end|>"
        for m in msgs:
            if m.role == "tool":
                out += "<|tool_response|>" + m.content + "<|end|>"
            else:
                calls = "".join(CALL_OPEN + dumps({"name": c.name, "arguments": arguments_object(c.arguments)})
                                + CALL_CLOSE for c in m.tool_calls or ())
                out += f"<|{m.role}|>{m.content}{calls}<|end|>"
        return out + "<|assistant|>"

    def tool_prefill(self) -> str:
        return CALL_OPEN

    def parse_tool_calls(self, text: str) -> tuple[str | None, list[ToolCall]]:
        first = text.find(CALL_OPEN)
        if first < 0:
            return text, []
        calls, at = [], first
        while at >= 0:
            got = decode_json(text, at + len(CALL_OPEN))
            if got is None:
                return text, []
            for obj in got[0] if isinstance(got[0], list) else [got[0]]:
                if isinstance(obj, dict) and isinstance(obj.get("function"), dict):
                    obj = obj["function"]  # {"type": "function", "function": {...}}
                call = make_call(obj, ("arguments", "parameters"), self.new_tool_call_id)
                if call is None:
                    return text, []
                calls.append(call)
            at = text.find(CALL_OPEN, got[1])
        return content_before(text, first), calls
