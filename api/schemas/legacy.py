"""The ``/old/*`` routes kept for clients of the first LLM-Host API."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from tasks.contract.payloads import LoadOptions


class InitializeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str
    device: Optional[str] = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    quantization: Literal["none", "8bit", "4bit"] = "none"
    max_context: Optional[int] = Field(None, ge=16)

    def options(self, default_device: str) -> LoadOptions:
        return LoadOptions(device=self.device or default_device, dtype=self.dtype,
                           quantization=self.quantization, max_context=self.max_context)


class GenerateRequest(BaseModel):
    """A raw ``prompt`` (completed as text) or ``messages`` (a chat, templated by the model)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[list[dict]] = None
    # Old clients send `max_tokens` too (the OpenAI name): the same field.
    max_new_tokens: int = Field(128, ge=1, validation_alias=AliasChoices("max_new_tokens", "max_tokens"))
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
