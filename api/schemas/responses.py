"""``POST /v1/responses`` request: checked once, when parsed, into the items, tools and constraint
of its job. Fields in the order of the OpenAI reference.

``reasoning.effort`` reaches a reasoning model's template as ``reasoning_effort`` (``"none"`` turns a
Qwen 3 thought off); no ``summary`` is made. ``truncation: "auto"`` is accepted
but does not drop items yet: a conversation too long for the model is a 400
(``context_length_exceeded``) either way. Unknown fields are tolerated and logged once.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional, Self, Union

from pydantic import Field, PrivateAttr, field_validator, model_validator

from tasks.contract.errors import JobError, invalid_request
from tasks.contract.payloads import GenerateJob, SamplingParams

from .common import OpenAIModel
from .response_format import Constraint, JsonObject, JsonSchema
from .response_items import Item, parse_input, to_messages
from .tools import FunctionSpec, ToolChoice, forces_a_call, parse_tool_choice, parse_tools

LOGPROBS_INCLUDE = "message.output_text.logprobs"
DEFAULT_TEXT_FORMAT = {"type": "text"}


class ResponseRequest(OpenAIModel):
    model: str
    input: Union[str, list[Any]]
    background: Optional[bool] = None
    include: Optional[list[str]] = None
    instructions: Optional[str] = None
    max_output_tokens: Optional[int] = Field(None, ge=1)
    metadata: Optional[dict[str, str]] = None
    parallel_tool_calls: Optional[bool] = None
    previous_response_id: Optional[str] = None
    reasoning: Optional[dict[str, Any]] = None
    store: Optional[bool] = None
    stream: Optional[bool] = None
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    text: Optional[dict[str, Any]] = None
    tool_choice: Optional[Any] = None
    tools: Optional[list[Any]] = None
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    truncation: Optional[Literal["auto", "disabled"]] = None
    user: Optional[str] = None

    unsupported_fields: ClassVar[dict[str, Any]] = {"conversation": None, "prompt": None}

    _items: list[Item] = PrivateAttr(default_factory=list)
    _tools: Optional[list[FunctionSpec]] = PrivateAttr(None)
    _tool_choice: ToolChoice = PrivateAttr("none")
    _constraint: Optional[Constraint] = PrivateAttr(None)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: Optional[dict[str, str]]) -> Optional[dict[str, str]]:
        if v is not None and (len(v) > 16 or any(len(k) > 64 or len(s) > 512 for k, s in v.items())):
            raise ValueError("at most 16 pairs, keys of at most 64 characters, values of at most 512")
        return v

    @model_validator(mode="after")
    def _resolved(self) -> Self:
        if self.background and self.store is False:
            raise invalid_request("`background: true` needs the response stored; drop `store: false`.", param="store")
        self._tools = _function_tools(self.tools)
        self._tool_choice = _tool_choice(self.tool_choice, self._tools)
        self._constraint = _text_format(self.text)
        if forces_a_call(self._tool_choice) and self._constraint is not None:
            raise invalid_request("`text.format` cannot be combined with a `tool_choice` that forces a call.",
                                  param="text.format")
        self._items = parse_input(self.input)
        if not self._items and self.previous_response_id is None:
            raise invalid_request("`input` must hold at least one item.", param="input")
        return self

    @property
    def items(self) -> list[Item]:
        return self._items

    @property
    def stored(self) -> bool:
        return self.store is not False

    def to_sampling(self) -> SamplingParams:
        wants_logprobs = self.top_logprobs is not None or LOGPROBS_INCLUDE in (self.include or ())
        return SamplingParams(max_tokens=self.max_output_tokens,
                              temperature=1.0 if self.temperature is None else self.temperature,
                              top_p=1.0 if self.top_p is None else self.top_p,
                              logprobs=(self.top_logprobs or 0) if wants_logprobs else None,
                              constraint=self._constraint.payload() if self._constraint else None)

    def to_job(self, job_id: str, deadline: float, request_id: Optional[str], history: list[Item]) -> GenerateJob:
        """``history``: the items of the conversation before this request (``previous_response_id``)."""
        choice, effort = self._tool_choice, (self.reasoning or {}).get("effort")
        return GenerateJob(job_id=job_id, model=self.model, messages=to_messages(history + self._items, self.instructions),
                           sampling=self.to_sampling(), stream=bool(self.stream), deadline=deadline,
                           request_id=request_id, tools=[s.payload() for s in self._tools] if self._tools else None,
                           tool_choice=choice if isinstance(choice, str) else choice.payload(),
                           parallel_tool_calls=self.parallel_tool_calls is not False,
                           chat_template_kwargs={"reasoning_effort": effort} if isinstance(effort, str) else None)

    def echo(self) -> dict[str, Any]:
        """The request's parameters as a response object repeats them (with OpenAI's defaults)."""
        return {
            "background": bool(self.background), "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens, "metadata": self.metadata or {}, "model": self.model,
            "parallel_tool_calls": self.parallel_tool_calls is not False,
            "previous_response_id": self.previous_response_id,
            "reasoning": self.reasoning or {"effort": None, "summary": None}, "store": self.stored,
            "temperature": 1.0 if self.temperature is None else self.temperature,
            "text": {"format": (self.text or {}).get("format") or DEFAULT_TEXT_FORMAT},
            "tool_choice": "auto" if self.tool_choice is None else self.tool_choice,
            "tools": [{"type": "function", **s.payload(), "strict": _strict(self.tools, s.name)}
                      for s in self._tools or ()],
            "top_logprobs": self.top_logprobs or 0, "top_p": 1.0 if self.top_p is None else self.top_p,
            "truncation": self.truncation or "disabled", "user": self.user,
        }


def _strict(tools: Optional[list[Any]], name: str) -> bool:
    return next((t.get("strict") is not False for t in tools or () if t.get("name") == name), True)


def _function_tools(tools: Optional[list[Any]]) -> Optional[list[FunctionSpec]]:
    """Responses' flat function tools (``{"type": "function", "name", "parameters"}``), checked by
    the chat completions' rules; any other tool type is a 400 naming it."""
    chat_shaped = []
    for i, tool in enumerate(tools or ()):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise invalid_request(f"Tools of type `{kind}` are not supported; only `function` tools are.",
                                  param=f"tools[{i}].type")
        chat_shaped.append({"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}})
    try:
        return parse_tools(chat_shaped)
    except JobError as e:  # the chat rules name `tools[i].function.x`; here it is `tools[i].x`
        raise invalid_request(e.message.replace(".function", ""), param=(e.param or "").replace(".function", "")
                              or None) from None


def _tool_choice(choice: Any, specs: Optional[list[FunctionSpec]]) -> ToolChoice:
    """``"auto" | "none" | "required" | {"type": "function", "name": ...}`` (a name not in ``tools``
    is a 400)."""
    if isinstance(choice, dict):
        if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
            raise invalid_request('`tool_choice` must be "none", "auto", "required" or {"type": "function", '
                                  '"name": ...}.', param="tool_choice")
        choice = {"type": "function", "function": {"name": choice["name"]}}
    return parse_tool_choice(choice, specs)


def _text_format(text: Optional[dict[str, Any]]) -> Optional[Constraint]:
    """``text.format``: text, json_object, or json_schema (``name``, ``schema``, ``strict``)."""
    fmt = (text or {}).get("format") or DEFAULT_TEXT_FORMAT
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return JsonObject()
    if kind == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise invalid_request("`text.format.schema` must be a JSON schema object.", param="text.format.schema")
        return JsonSchema(json_schema=schema)
    raise invalid_request(f"`text.format.type` must be text, json_object or json_schema, not {kind!r}.",
                          param="text.format.type")
