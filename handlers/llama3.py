"""Llama 3.x: header tokens around each role, ``<|eot_id|>`` ends a turn, one BOS at the start.

Tools use Llama 3.1's JSON format: the function specs go in the first user turn, a call is
``{"name": ..., "parameters": {...}}`` as the whole answer (several separated by ``;``), a result is
an ``ipython`` turn; ``<|eom_id|>`` or ``<|eot_id|>`` ends the turn.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from tasks.contract.errors import invalid_request
from tasks.contract.payloads import Message, ToolCall

from .base import ChatHandler
from .tools import arguments_object, decode_json, dumps, hf_tools, make_call

PYTHON_TAG = "<|python_tag|>"
TOOLS_PREAMBLE = ("Given the following functions, please respond with a JSON for a function call with its proper "
                  "arguments that best answers the given prompt.\n\n"
                  'Respond in the format {"name": function name, "parameters": dictionary of argument name and its '
                  'value}.Do not use variables.\n\n')


def _turn(role: str, content: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>"


class Llama3Handler(ChatHandler):
    family = "llama3"
    # <|eom_id|> ends a turn that called a tool (ipython); <|end_of_text|> ends raw text.
    stop_tokens = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")
    tool_markers = ()
    tool_start_markers = ("{", PYTHON_TAG)
    tool_args_key = "parameters"

    def builtin_template(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None,
                         options: Mapping[str, Any] | None = None) -> str:
        msgs, out = list(messages), "<|begin_of_text|>"
        if tools:
            system = msgs.pop(0).content.strip() if msgs and msgs[0].role == "system" else ""
            out += _turn("system", "Environment: ipython\n\n" + system)
            if not msgs or msgs[0].role != "user":
                raise invalid_request("Llama 3 puts the tools in the first user message; the conversation has none "
                                      "after the system message.", param="messages")
            specs = "".join(dumps(t, indent=4) + "\n\n" for t in hf_tools(tools))
            out += _turn("user", TOOLS_PREAMBLE + specs + msgs.pop(0).content.strip())
        for m in msgs:
            if m.role == "assistant" and m.tool_calls:
                out += _turn("assistant", "; ".join(
                    '{"name": "' + c.name + '", "parameters": ' + dumps(arguments_object(c.arguments)) + "}"
                    for c in m.tool_calls))
            elif m.role == "tool":
                out += _turn("ipython", m.content)
            else:
                out += _turn(m.role, m.content.strip())
        return out + "<|start_header_id|>assistant<|end_header_id|>\n\n"

    def tool_prefill(self) -> str:
        return ""  # a call is the whole answer: the grammar starts at its first brace

    def parse_tool_calls(self, text: str) -> tuple[str | None, list[ToolCall]]:
        body = text.lstrip()
        body = body.removeprefix(PYTHON_TAG)
        if not body.lstrip().startswith("{"):
            return text, []
        calls, at = [], 0
        while True:
            got = decode_json(body, at)
            call = make_call(got[0], ("parameters", "arguments"), self.new_tool_call_id) if got else None
            if got is None or call is None:
                return text, []
            calls.append(call)
            rest = body[got[1]:].lstrip()
            if not rest:
                return None, calls
            if not rest.startswith(";"):
                return text, []  # a call followed by prose: not a call after all
            at = len(body) - len(rest) + 1
