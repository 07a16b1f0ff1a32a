"""``POST /tokenize`` and ``POST /detokenize`` (as vLLM has them)."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from tasks.contract.errors import invalid_request

from .chat import ChatMessage


class TokenizeRequest(BaseModel):
    """A raw ``prompt`` or chat ``messages`` (templated by the model's family, as for a chat)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str
    prompt: Optional[str] = None
    messages: Optional[list[ChatMessage]] = None
    add_special_tokens: bool = True

    def check(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise invalid_request("Give exactly one of `prompt` or `messages`.", param="prompt")


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str
    tokens: list[int] = Field(max_length=1_000_000)
