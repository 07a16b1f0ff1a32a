"""DeepSeek-R1 and its distills (Qwen, Llama): ``<｜User｜>`` / ``<｜Assistant｜>`` turns after the
BOS and the bare system text, a thought in ``<think>`` … ``</think>``.

The template opens ``<think>`` in the generation prompt, so the output starts inside the thought
(``enable_thinking: false`` closes it in the prompt instead). Earlier thoughts are dropped from
history. Tools use DeepSeek's call blocks::

    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME
    ```json
    {ARGUMENTS}
    ```<｜tool▁call▁end｜><｜tool▁calls▁end｜>

and results in ``<｜tool▁outputs▁begin｜>`` … ``<｜tool▁outputs▁end｜>``, after which the assistant
goes on without a new turn tag. The template lists no tools; ours describes them and the call
format after the system text. The distills were not trained for tools: expect little of them.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from tasks.contract.payloads import Message, ToolCall

from .base import ChatHandler
from .reasoning import ThinkTags, thinking_off
from .tools import EMPTY_PARAMETERS, arguments_object, content_before, decode_json, dumps, make_call

BOS, EOS, USER, ASSISTANT = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"
CALLS, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
CALL, CALL_END, SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
OUTPUTS, OUTPUTS_END = "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>"
OUTPUT, OUTPUT_END = "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>"
_CALL_HEAD = re.compile(re.escape(CALL) + r"(\w+)" + re.escape(SEP) + r"([^\n]+)\n```(?:json)?\n")
TOOLS_PROMPT = ("## Tools\nYou can call these functions (JSON Schema of their parameters):\n{specs}\n\n"
                "To call functions, answer with:\n" + CALLS + CALL + "function" + SEP + "NAME\n```json\nARGUMENTS\n```"
                + CALL_END + CALLS_END)


def _block(name: str, arguments: str) -> str:
    return CALL + "function" + SEP + name + "\n```json\n" + dumps(arguments_object(arguments)) + "\n```" + CALL_END


class DeepSeekR1Handler(ChatHandler):
    family = "deepseek-r1"
    stop_tokens = (EOS,)
    reasoning_tags = ThinkTags("<think>", "</think>")
    kept_tokens = (CALLS, CALLS_END, CALL, CALL_END, SEP)
    tool_markers = (CALLS, CALL)

    def builtin_template(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None,
                         options: Mapping[str, Any] | None = None) -> str:
        system = next((m.content for m in reversed(messages) if m.role == "system"), "")
        if tools:
            specs = "\n".join(dumps(t) for t in tools)
            system += ("\n\n" if system else "") + TOOLS_PROMPT.format(specs=specs)
        out, outputs = BOS + system, False
        for m in messages:
            if m.role != "tool" and outputs:
                out += OUTPUTS_END
            if m.role == "user":
                out += USER + m.content
            elif m.role == "assistant" and m.tool_calls:
                out += ASSISTANT + m.content + CALLS + "\n".join(_block(c.name, c.arguments) for c in m.tool_calls)
                out += CALLS_END + EOS
            elif m.role == "assistant":
                out += ("" if outputs else ASSISTANT) + m.content.split("</think>")[-1] + EOS
            elif m.role == "tool":
                out += ("\n" + OUTPUT if outputs else OUTPUTS + OUTPUT) + m.content + OUTPUT_END
            outputs = m.role == "tool"
        return out + OUTPUTS_END if outputs else out + ASSISTANT + "<think>\n"

    def render_chat(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None,
                    template_kwargs: Mapping[str, Any] | None = None) -> str:
        text = super().render_chat(messages, tools, template_kwargs)
        if thinking_off(self.template_options(template_kwargs)) and text.endswith("<think>\n"):
            text += "\n</think>\n\n"  # an empty thought, closed: the answer comes at once
        return text

    def forced_call_branches(self, tools: Sequence[dict[str, Any]],
                             choice: str | dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """The name precedes the JSON: one opener per function the choice allows."""
        chosen = [t for t in tools if not isinstance(choice, dict) or t["name"] == choice.get("name")]
        return [(CALLS + CALL + "function" + SEP + t["name"] + "\n```json\n", t.get("parameters") or EMPTY_PARAMETERS)
                for t in chosen]

    def parse_tool_calls(self, text: str) -> tuple[str | None, list[ToolCall]]:
        first = min((i for i in (text.find(CALLS), text.find(CALL)) if i >= 0), default=-1)
        if first < 0:
            return text, []
        calls = []
        for head in _CALL_HEAD.finditer(text, first):
            got = decode_json(text, head.end())
            if got is None or not isinstance(got[0], dict):
                return text, []
            call = make_call({"name": head.group(2).strip(), "arguments": got[0]}, ("arguments",), self.new_tool_call_id)
            if call is None:
                return text, []
            calls.append(call)
        return (content_before(text, first), calls) if calls else (text, [])
