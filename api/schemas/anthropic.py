"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``: the Anthropic Messages API.

Fields in the order of Anthropic's reference; unknown ones are tolerated and logged once (clients
send newer fields, ``metadata``, ``service_tier``...). ``thinking: {"type": "disabled"}`` turns a
reasoning model's thought off (``enable_thinking: false`` for its template); ``enabled`` is its
default, and ``budget_tokens`` is not enforced apart from ``max_tokens``. The blocks become job messages in :mod:`.anthropic_content`; the job is
the same :class:`GenerateJob` the OpenAI routes make, so tools use each family's own format.
"""

from __future__ import annotations

from typing import Any, Optional, Self, Union

from pydantic import Field, PrivateAttr, field_validator, model_validator

from tasks.contract.payloads import GenerateJob, Message, SamplingParams, TokenizeJob

from .anthropic_content import Block, Turn, conversation, parse_tool_choice, parse_tools
from .common import OpenAIModel
from .tools import FunctionSpec, ToolChoice


class MessagesInput(OpenAIModel):
    """What the prompt is made of: shared by a message request and its token count."""

    model: str
    messages: list[Turn] = Field(min_length=1)
    system: Optional[Union[str, list[Block]]] = None
    thinking: Optional[dict[str, Any]] = None  # see the module's docstring
    tool_choice: Optional[dict[str, Any]] = None
    tools: Optional[list[Any]] = None

    _messages: list[Message] = PrivateAttr(default_factory=list)
    _tools: Optional[list[FunctionSpec]] = PrivateAttr(None)
    _tool_choice: ToolChoice = PrivateAttr("none")
    _parallel: bool = PrivateAttr(True)

    @model_validator(mode="after")
    def _resolved(self) -> Self:
        self._tools = parse_tools(self.tools)
        self._tool_choice, self._parallel = parse_tool_choice(self.tool_choice, self._tools)
        self._messages = conversation(self.system, self.messages)
        return self

    @property
    def renders_tools(self) -> bool:
        """Whether the worker renders the tools into the prompt (it does unless ``none``)."""
        return bool(self._tools) and self._tool_choice != "none"

    def generate_job(self, job_id: str, deadline: float, request_id: Optional[str], sampling: SamplingParams,
                     stream: bool = False) -> GenerateJob:
        choice = self._tool_choice
        return GenerateJob(job_id=job_id, model=self.model, messages=self._messages, sampling=sampling, stream=stream,
                           deadline=deadline, request_id=request_id,
                           tools=[s.payload() for s in self._tools] if self._tools else None,
                           tool_choice=choice if isinstance(choice, str) else choice.payload(),
                           parallel_tool_calls=self._parallel,
                           chat_template_kwargs={"enable_thinking": False} if self.thinking_off else None)

    @property
    def thinking_off(self) -> bool:
        return isinstance(self.thinking, dict) and self.thinking.get("type") == "disabled"


class MessagesRequest(MessagesInput):
    max_tokens: int = Field(ge=1)
    metadata: Optional[dict[str, Any]] = None  # accepted, not used
    stop_sequences: Optional[list[str]] = None
    stream: bool = False
    temperature: Optional[float] = Field(None, ge=0.0, le=1.0)
    top_k: Optional[int] = Field(None, ge=0)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)

    @field_validator("stop_sequences")
    @classmethod
    def _non_empty(cls, v: Optional[list[str]]) -> Optional[list[str]]:
        if v is not None and any(not s for s in v):
            raise ValueError("stop sequences must not be empty")
        return v

    def to_sampling(self) -> SamplingParams:
        """Request > Anthropic's defaults (temperature 1, no top_p / top_k), in one place."""
        return SamplingParams(max_tokens=self.max_tokens, temperature=1.0 if self.temperature is None else self.temperature,
                              top_p=1.0 if self.top_p is None else self.top_p, top_k=self.top_k or 0,
                              stop=list(self.stop_sequences or []))

    def to_job(self, job_id: str, deadline: float, request_id: Optional[str]) -> GenerateJob:
        return self.generate_job(job_id, deadline, request_id, self.to_sampling(), stream=self.stream)


class CountTokensRequest(MessagesInput):
    """Counted by the model's worker exactly as a message request's ``usage.input_tokens``."""

    def to_job(self, job_id: str, deadline: float, request_id: Optional[str]) -> TokenizeJob | GenerateJob:
        """A tokenize job renders messages only. When tools are rendered too (and, for a forced call,
        the opening of the call the prompt ends with), only a generation renders the prompt the same
        way: then a one-token greedy generation is run and its prompt counted."""
        if not self.renders_tools:
            return TokenizeJob(job_id=job_id, model=self.model, messages=self._messages, deadline=deadline,
                               request_id=request_id)
        return self.generate_job(job_id, deadline, request_id, SamplingParams(max_tokens=1, temperature=0.0))
