"""Shared pieces of the OpenAI wire schemas."""

from __future__ import annotations

from typing import Any, ClassVar, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks.errors import invalid_request
from tasks.payloads import SamplingParams


class OpenAIModel(BaseModel):
    """Tolerates fields we do not know (clients send vendor extensions); refuses known ones we do
    not support through :meth:`refuse_unsupported`, never by silently ignoring them."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    # field name -> value that means "not used"; anything else is a clear 400.
    unsupported_fields: ClassVar[dict[str, Any]] = {}

    def refuse_unsupported(self) -> None:
        for name, neutral in self.unsupported_fields.items():
            value = getattr(self, name, None) if name in type(self).model_fields else (self.model_extra or {}).get(name)
            if value is not None and value != neutral:
                raise invalid_request(f"`{name}` is not supported by this server yet.", param=name)


class SamplingFields(OpenAIModel):
    """Fields common to chat and text completions, in the order of the OpenAI reference."""

    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    n: int = Field(1, ge=1, le=128)
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    stream: bool = False
    stream_options: Optional[dict[str, Any]] = None
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    user: Optional[str] = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: Optional[Union[str, list[str]]]) -> Optional[list[str]]:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    def check_common(self) -> None:
        self.refuse_unsupported()
        if self.n != 1:
            raise invalid_request("Only `n` = 1 is supported by this server yet.", param="n")
        if self.stream_options is not None and not self.stream:
            raise invalid_request("`stream_options` is only allowed when `stream` is true.", param="stream_options")

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    def sampling(self, max_tokens: Optional[int]) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=self.seed,
            stop=list(self.stop or []),
        )
