"""``POST /tokenize`` and ``POST /detokenize`` (as vLLM has them)."""

from __future__ import annotations

from typing import Optional, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from tasks.contract.errors import invalid_request
from tasks.contract.payloads import Message, TokenizeJob

from .chat import ChatMessage


class TokenizeRequest(BaseModel):
    """A raw ``prompt`` or chat ``messages`` (templated by the model's family, as for a chat)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str
    prompt: Optional[str] = None
    messages: Optional[list[ChatMessage]] = None
    add_special_tokens: bool = True

    _messages: Optional[list[Message]] = PrivateAttr(None)

    @model_validator(mode="after")
    def _resolved(self) -> Self:
        if (self.prompt is None) == (self.messages is None):
            raise invalid_request("Give exactly one of `prompt` or `messages`.", param="prompt")
        if self.messages is not None:
            self._messages = [m.flatten(i) for i, m in enumerate(self.messages)]
        return self

    def to_job(self, job_id: str, deadline: float, request_id: Optional[str]) -> TokenizeJob:
        return TokenizeJob(job_id=job_id, model=self.model, messages=self._messages, prompt=self.prompt,
                           add_special_tokens=self.add_special_tokens, deadline=deadline, request_id=request_id)


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str
    tokens: list[int] = Field(max_length=1_000_000)

    def to_job(self, job_id: str, deadline: float, request_id: Optional[str]) -> TokenizeJob:
        return TokenizeJob(job_id=job_id, model=self.model, tokens=self.tokens, deadline=deadline,
                           request_id=request_id)
