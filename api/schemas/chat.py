"""``POST /v1/chat/completions`` request."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from tasks.contract.errors import invalid_request
from tasks.contract.payloads import Message, ToolCall

from .common import SamplingFields


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: Optional[str] = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Optional[Union[str, list[ContentPart]]] = None
    name: Optional[str] = None
    tool_calls: Optional[list[Any]] = None
    tool_call_id: Optional[str] = None

    def flatten(self, index: int) -> Message:
        """Text parts joined into one string; anything else is refused with the message's index."""
        param = f"messages[{index}]"
        if self.role == "function":
            raise invalid_request("`function` messages (the deprecated function calling) are not supported; "
                                  "use `tool` messages.", param=param)
        if self.role == "tool" and not self.tool_call_id:
            raise invalid_request(f"{param} is a `tool` message and needs `tool_call_id`.", param=param)
        calls = None
        if self.tool_calls:
            if self.role != "assistant":
                raise invalid_request(f"Only assistant messages carry `tool_calls`; {param} is `{self.role}`.",
                                      param=f"{param}.tool_calls")
            calls = [_tool_call(c, f"{param}.tool_calls[{j}]") for j, c in enumerate(self.tool_calls)]
            if self.content is None:
                return Message(role="assistant", content="", tool_calls=calls)
        if self.content is None:
            raise invalid_request(f"{param}.content must be a string or a list of text parts.", param=f"{param}.content")
        if isinstance(self.content, str):
            text = self.content
        else:
            for j, part in enumerate(self.content):
                if part.type != "text" or part.text is None:
                    raise invalid_request(f"Only text content parts are supported; {param}.content[{j}] is `{part.type}`.",
                                          param=f"{param}.content[{j}]")
            text = "".join(part.text or "" for part in self.content)
        role = "system" if self.role == "developer" else self.role
        return Message(role=role, content=text, tool_calls=calls,
                       tool_call_id=self.tool_call_id if self.role == "tool" else None)


TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _tool_call(call: Any, param: str) -> ToolCall:
    """``{"id", "type": "function", "function": {"name", "arguments"}}`` of an assistant message."""
    fn = call.get("function") if isinstance(call, dict) else None
    if (not isinstance(call, dict) or call.get("type", "function") != "function" or not isinstance(call.get("id"), str)
            or not isinstance(fn, dict) or not isinstance(fn.get("name"), str)
            or not isinstance(fn.get("arguments", ""), str)):
        raise invalid_request(f"{param} must be {{\"id\": str, \"type\": \"function\", \"function\": "
                              "{\"name\": str, \"arguments\": str}}.", param=param)
    return ToolCall(id=call["id"], name=fn["name"], arguments=fn.get("arguments") or "{}")


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    response_format: Optional[dict[str, Any]] = None
    tools: Optional[list[Any]] = None
    tool_choice: Optional[Any] = None
    parallel_tool_calls: Optional[bool] = None

    unsupported_fields: ClassVar[dict[str, Any]] = {"functions": [], "function_call": "none"}

    def check(self) -> None:
        self.check_common()
        if self.top_logprobs and not self.logprobs:
            raise invalid_request("`top_logprobs` needs `logprobs: true`.", param="top_logprobs")
        if self.forced_tool_choice() and self.constraint() is not None:
            raise invalid_request("`response_format` cannot be combined with a `tool_choice` that forces a call.",
                                  param="response_format")

    def tool_specs(self) -> Optional[list[dict[str, Any]]]:
        """``tools`` as the worker's function specs ``{"name", "description", "parameters"}``."""
        if not self.tools:
            return None
        specs: list[dict[str, Any]] = []
        for i, tool in enumerate(self.tools):
            param = f"tools[{i}]"
            if not isinstance(tool, dict) or tool.get("type") != "function":
                raise invalid_request(f'`{param}.type` must be "function".', param=f"{param}.type")
            fn = tool.get("function")
            if not isinstance(fn, dict):
                raise invalid_request(f"`{param}.function` must be an object.", param=f"{param}.function")
            name = fn.get("name")
            if not isinstance(name, str) or not TOOL_NAME.match(name):
                raise invalid_request(f"`{param}.function.name` must match ^[A-Za-z0-9_-]{{1,64}}$; got {name!r}.",
                                      param=f"{param}.function.name")
            if name in (s["name"] for s in specs):
                raise invalid_request(f"`{param}.function.name` {name!r} is declared twice.",
                                      param=f"{param}.function.name")
            parameters = fn.get("parameters", {"type": "object", "properties": {}})
            if not isinstance(parameters, dict):
                raise invalid_request(f"`{param}.function.parameters` must be a JSON schema object.",
                                      param=f"{param}.function.parameters")
            description = fn.get("description")
            if description is not None and not isinstance(description, str):
                raise invalid_request(f"`{param}.function.description` must be a string.",
                                      param=f"{param}.function.description")
            specs.append({"name": name, **({"description": description} if description else {}),
                          "parameters": parameters})
        return specs

    def normalized_tool_choice(self) -> Union[str, dict[str, Any]]:
        """``"none" | "auto" | "required" | {"name": fn}``; 400 when it names no declared tool."""
        choice, specs = self.tool_choice, self.tool_specs()
        if choice is None:
            return "auto" if specs else "none"
        if isinstance(choice, str):
            if choice not in ("none", "auto", "required"):
                raise invalid_request(f'`tool_choice` must be "none", "auto", "required" or a function; got {choice!r}.',
                                      param="tool_choice")
            if choice == "required" and not specs:
                raise invalid_request('`tool_choice: "required"` needs `tools`.', param="tool_choice")
            return choice
        fn = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise invalid_request('`tool_choice` must be {"type": "function", "function": {"name": ...}}.',
                                  param="tool_choice")
        if fn["name"] not in (s["name"] for s in specs or ()):
            raise invalid_request(f"`tool_choice` names the function {fn['name']!r}, which is not in `tools`.",
                                  param="tool_choice")
        return {"name": fn["name"]}

    def forced_tool_choice(self) -> bool:
        choice = self.normalized_tool_choice()
        return isinstance(choice, dict) or choice == "required"

    def constraint(self) -> Optional[dict[str, Any]]:
        """``response_format`` as the worker's structured-output constraint."""
        rf = self.response_format
        kind = (rf or {}).get("type", "text")
        if kind == "text":
            return None
        if kind == "json_object":
            return {"type": "json_object"}
        if kind == "json_schema":
            spec = rf.get("json_schema") or {}  # type: ignore[union-attr]
            if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
                raise invalid_request("`response_format.json_schema.schema` must be a JSON schema object.",
                                      param="response_format.json_schema")
            return {"type": "json_schema", "schema": spec.get("schema") or {}}
        raise invalid_request(f"`response_format.type` must be text, json_object or json_schema, not {kind!r}.",
                              param="response_format.type")

    def to_messages(self) -> list[Message]:
        return [m.flatten(i) for i, m in enumerate(self.messages)]

    @property
    def max_new_tokens(self) -> Optional[int]:
        return self.max_completion_tokens or self.max_tokens

    def to_sampling(self):  # noqa: ANN201
        return self.sampling(self.max_new_tokens, logprobs=(self.top_logprobs or 0) if self.logprobs else None,
                             constraint=self.constraint())
