"""ChatML: SmolLM2, Qwen 1.5–3, and others that speak ``<|im_start|>role … <|im_end|>``.

Tools use the Hermes format of Qwen 2.5's template: the tools listed in the system turn inside
``<tools></tools>``, calls as ``<tool_call>`` blocks, results as a user turn of ``<tool_response>``s.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from tasks.contract.payloads import Message

from .base import ChatHandler
from .tools import dumps, hermes_call, hf_tools

TOOLS_HEADER = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_FOOTER = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
                "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
                "<args-json-object>}\n</tool_call><|im_end|>\n")


class ChatMLHandler(ChatHandler):
    family = "chatml"
    stop_tokens = ("<|im_end|>", "<|endoftext|>")
    tool_markers = ("<tool_call>",)

    def builtin_template(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None,
                         options: Mapping[str, Any] | None = None) -> str:
        msgs, out = list(messages), ""
        if tools:
            system = msgs.pop(0).content + "\n\n" if msgs and msgs[0].role == "system" else ""
            out += ("<|im_start|>system\n" + system + TOOLS_HEADER + "".join("\n" + dumps(t) for t in hf_tools(tools))
                    + TOOLS_FOOTER)
        for i, m in enumerate(msgs):
            if m.role == "assistant" and m.tool_calls:
                out += ("<|im_start|>assistant" + ("\n" + m.content if m.content else "")
                        + "".join("\n" + hermes_call(c) for c in m.tool_calls) + "<|im_end|>\n")
            elif m.role == "tool":  # consecutive results share one user turn
                if i == 0 or msgs[i - 1].role != "tool":
                    out += "<|im_start|>user"
                out += "\n<tool_response>\n" + m.content + "\n</tool_response>"
                if i == len(msgs) - 1 or msgs[i + 1].role != "tool":
                    out += "<|im_end|>\n"
            else:
                out += f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n"
        return out + "<|im_start|>assistant\n"
