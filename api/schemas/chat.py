"""``POST /v1/chat/completions`` request."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from tasks.errors import invalid_request
from tasks.payloads import Message

from .common import OpenAIModel, SamplingFields


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: Optional[str] = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Optional[Union[str, list[ContentPart]]] = None
    name: Optional[str] = None

    def flatten(self, index: int) -> Message:
        """Text parts joined into one string; anything else is refused with the message's index."""
        param = f"messages[{index}]"
        if self.role in ("tool", "function") or getattr(self, "tool_calls", None):
            raise invalid_request("Tool messages and tool calls are not supported by this server yet.", param=param)
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
        return Message(role=role, content=text)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = None
    tools: Optional[list[Any]] = None
    tool_choice: Optional[Any] = None
    response_format: Optional[dict[str, Any]] = None
    frequency_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    logit_bias: Optional[dict[str, float]] = None

    unsupported_fields: ClassVar[dict[str, Any]] = {"logprobs": False, "top_logprobs": 0, "tools": [], "tool_choice": "none",
                    "frequency_penalty": 0.0, "presence_penalty": 0.0, "logit_bias": {},
                    "parallel_tool_calls": None, "functions": [], "function_call": "none"}

    def check(self) -> None:
        self.check_common()
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise invalid_request("`response_format` other than text is not supported by this server yet.",
                                  param="response_format")

    def to_messages(self) -> list[Message]:
        return [m.flatten(i) for i, m in enumerate(self.messages)]

    @property
    def max_new_tokens(self) -> Optional[int]:
        return self.max_completion_tokens or self.max_tokens
