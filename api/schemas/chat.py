"""``POST /v1/chat/completions`` request."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional, Self, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from tasks.contract.errors import invalid_request
from tasks.contract.payloads import GenerateJob, Message, SamplingParams, ToolCall

from .common import SamplingFields
from .response_format import Constraint, parse_constraint
from .tools import FunctionSpec, ToolChoice, forces_a_call, parse_tool_choice, parse_tools

# Variables apply_chat_template sets itself: a request may not override them.
TEMPLATE_RESERVED = frozenset({"messages", "conversation", "tools", "documents", "chat_template", "add_generation_prompt",
                               "continue_final_message", "tokenize", "padding", "truncation", "max_length",
                               "return_tensors", "return_dict", "return_assistant_tokens_mask", "tokenizer_kwargs"})


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
    reasoning_effort: Optional[Literal["none", "minimal", "low", "medium", "high"]] = None
    # vLLM's extension: variables for the model's chat template (e.g. {"enable_thinking": false}).
    chat_template_kwargs: Optional[dict[str, Any]] = None

    unsupported_fields: ClassVar[dict[str, Any]] = {"functions": [], "function_call": "none"}

    # What the checks below resolve the wire fields into, for the job.
    _messages: list[Message] = PrivateAttr(default_factory=list)
    _tools: Optional[list[FunctionSpec]] = PrivateAttr(None)
    _tool_choice: ToolChoice = PrivateAttr("none")
    _constraint: Optional[Constraint] = PrivateAttr(None)

    @model_validator(mode="after")
    def _resolved(self) -> Self:
        # In the order the checks have always answered (the first failing one is the 400).
        if self.top_logprobs and not self.logprobs:
            raise invalid_request("`top_logprobs` needs `logprobs: true`.", param="top_logprobs")
        self._tools = parse_tools(self.tools)
        self._tool_choice = parse_tool_choice(self.tool_choice, self._tools)
        if forces_a_call(self._tool_choice) and parse_constraint(self.response_format) is not None:
            raise invalid_request("`response_format` cannot be combined with a `tool_choice` that forces a call.",
                                  param="response_format")
        if reserved := sorted(set(self.chat_template_kwargs or {}) & TEMPLATE_RESERVED):
            raise invalid_request(f"`chat_template_kwargs` cannot set {', '.join(reserved)}: the server sets them.",
                                  param="chat_template_kwargs")
        self._messages = [m.flatten(i) for i, m in enumerate(self.messages)]
        self._constraint = parse_constraint(self.response_format)
        return self

    @property
    def max_new_tokens(self) -> Optional[int]:
        return self.max_completion_tokens or self.max_tokens

    def to_sampling(self) -> SamplingParams:
        return self.sampling(self.max_new_tokens, logprobs=(self.top_logprobs or 0) if self.logprobs else None,
                             constraint=self._constraint.payload() if self._constraint else None)

    def to_job(self, job_id: str, deadline: float, request_id: Optional[str]) -> GenerateJob:
        return GenerateJob(job_id=job_id, model=self.model, messages=self._messages, n=self.n,
                           sampling=self.to_sampling(), stream=self.stream, deadline=deadline, request_id=request_id,
                           tools=[s.payload() for s in self._tools] if self._tools else None,
                           tool_choice=self._tool_choice if isinstance(self._tool_choice, str) else self._tool_choice.payload(),
                           parallel_tool_calls=self.parallel_tool_calls is not False,
                           chat_template_kwargs=self.template_kwargs())

    def template_kwargs(self) -> Optional[dict[str, Any]]:
        """``chat_template_kwargs`` with ``reasoning_effort`` (the template reads both; the kwargs win)."""
        effort = {"reasoning_effort": self.reasoning_effort} if self.reasoning_effort else {}
        merged = {**effort, **(self.chat_template_kwargs or {})}
        return merged or None
