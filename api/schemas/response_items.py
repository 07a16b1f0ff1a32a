"""The items of a Responses conversation: the wire's ``input`` checked and typed once, stored with
their ids (``GET /v1/responses/{id}/input_items``), and turned into the job's chat messages.

Supported: ``message`` (roles user, system, developer, assistant; text parts or a plain string),
``function_call``, ``function_call_output`` and ``reasoning`` (a reasoning model's earlier thought,
kept as an item but not shown to the model again: the families drop earlier thoughts). Anything
else is a 400 that names it.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from tasks.contract.errors import invalid_request
from tasks.contract.payloads import Message, ToolCall

TEXT_PARTS = ("input_text", "output_text")


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")  # an output part's annotations and logprobs are not input

    type: Literal["input_text", "output_text"]
    text: str


class MessageItem(BaseModel):
    type: Literal["message"] = "message"
    id: str
    role: Literal["user", "system", "developer", "assistant"]
    content: list[TextPart]
    status: str = "completed"

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.content)


class FunctionCallItem(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: str = "completed"


class FunctionCallOutputItem(BaseModel):
    type: Literal["function_call_output"] = "function_call_output"
    id: str
    call_id: str
    output: str
    status: str = "completed"


class ReasoningText(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class ReasoningItem(BaseModel):
    model_config = ConfigDict(extra="ignore")  # encrypted_content and the like mean nothing here

    type: Literal["reasoning"] = "reasoning"
    id: str
    summary: list[Any] = Field(default_factory=list)
    content: list[ReasoningText] = Field(default_factory=list)
    status: str = "completed"


Item = Annotated[Union[MessageItem, FunctionCallItem, FunctionCallOutputItem, ReasoningItem],
                 Field(discriminator="type")]


def parse_input(value: Union[str, list[Any]]) -> list[Item]:
    """``input`` as typed items; a 400 naming the first bad one."""
    if isinstance(value, str):
        return [MessageItem(id=new_item_id("msg"), role="user", content=[TextPart(type="input_text", text=value)])]
    items: list[Item] = []
    for i, raw in enumerate(value):
        param = f"input[{i}]"
        if not isinstance(raw, dict):
            raise invalid_request(f"`{param}` must be an object (an input item).", param=param)
        kind = raw.get("type", "message" if "role" in raw else None)
        if kind == "message":
            items.append(_message(raw, param))
        elif kind == "function_call":
            items.append(FunctionCallItem(id=_id(raw, "fc", param), call_id=_text(raw, "call_id", param),
                                          name=_text(raw, "name", param), arguments=_text(raw, "arguments", param)))
        elif kind == "function_call_output":
            items.append(FunctionCallOutputItem(id=_id(raw, "fco", param), call_id=_text(raw, "call_id", param),
                                                output=_output(raw.get("output"), f"{param}.output")))
        elif kind == "reasoning":
            parts = [ReasoningText(text=p["text"]) for p in raw.get("content") or () if isinstance(p, dict)
                     and isinstance(p.get("text"), str)]
            items.append(ReasoningItem(id=_id(raw, "rs", param), content=parts))
        else:
            raise invalid_request(f"Input items of type `{kind}` are not supported; use `message`, `function_call`, "
                                  "`function_call_output` or `reasoning`.", param=f"{param}.type")
    return items


def _text(raw: dict[str, Any], field: str, param: str) -> str:
    value = raw.get(field)
    if not isinstance(value, str):
        raise invalid_request(f"`{param}.{field}` must be a string.", param=f"{param}.{field}")
    return value


def _id(raw: dict[str, Any], prefix: str, param: str) -> str:
    value = raw.get("id")
    if value is None:
        return new_item_id(prefix)
    if not isinstance(value, str) or not value:
        raise invalid_request(f"`{param}.id` must be a non-empty string.", param=f"{param}.id")
    return value


def _message(raw: dict[str, Any], param: str) -> MessageItem:
    role = raw.get("role")
    if role not in ("user", "system", "developer", "assistant"):
        raise invalid_request(f"`{param}.role` must be user, system, developer or assistant; got {role!r}.",
                              param=f"{param}.role")
    content = raw.get("content")
    if isinstance(content, str):
        parts = [TextPart(type="output_text" if role == "assistant" else "input_text", text=content)]
    elif isinstance(content, list):
        parts = [_part(p, f"{param}.content[{j}]") for j, p in enumerate(content)]
    else:
        raise invalid_request(f"`{param}.content` must be a string or a list of text parts.", param=f"{param}.content")
    return MessageItem(id=_id(raw, "msg", param), role=role, content=parts)


def _part(raw: Any, param: str) -> TextPart:
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind not in TEXT_PARTS:
        raise invalid_request(f"Only text content parts (input_text, output_text) are supported; `{param}` is "
                              f"`{kind}`.", param=f"{param}.type")
    return TextPart(type=kind, text=_text(raw, "text", param))


def _output(value: Any, param: str) -> str:
    """A function's output: a string, or text parts (joined)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(_part(p, f"{param}[{j}]").text for j, p in enumerate(value))
    raise invalid_request(f"`{param}` must be a string or a list of text parts.", param=param)


def to_messages(items: list[Item], instructions: Optional[str] = None) -> list[Message]:
    """The job's chat: instructions first (as the system message), then the items in order. A run
    of function calls belongs to the assistant turn before it (or makes one); each function output
    is a ``tool`` turn."""
    out = [Message(role="system", content=instructions)] if instructions else []
    for item in items:
        if isinstance(item, MessageItem):
            role = "system" if item.role in ("system", "developer") else item.role
            out.append(Message(role=role, content=item.text))
        elif isinstance(item, FunctionCallItem):
            call = ToolCall(id=item.call_id, name=item.name, arguments=item.arguments)
            if out and out[-1].role == "assistant":
                out[-1].tool_calls = [*(out[-1].tool_calls or []), call]
            else:
                out.append(Message(role="assistant", content="", tool_calls=[call]))
        elif isinstance(item, FunctionCallOutputItem):
            out.append(Message(role="tool", content=item.output, tool_call_id=item.call_id))
    return out
