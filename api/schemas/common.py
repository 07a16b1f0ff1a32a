"""Shared pieces of the OpenAI wire schemas.

A request is checked once, when it is parsed: field types and bounds by pydantic, the rules that
span fields (or need the OpenAI wording of their error) by each model's ``after`` validator, which
raises :class:`JobError` with the field as ``param``. Pydantic passes exceptions other than
``ValueError`` through untouched, so that error reaches the client as it was written; ``after``
validators run only once every field is valid, so a field error still comes first, and a parent's
validator runs before its subclass's, as the checks did when they were methods.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Optional, Self, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from tasks.contract.errors import invalid_request
from tasks.contract.payloads import SamplingParams

log = logging.getLogger("llmhost.api")

_LOGGED_EXTRAS: set[str] = set()

# Validation context key: the body is for ``POST /v1/jobs``, which cannot stream.
BACKGROUND = "background"


class OpenAIModel(BaseModel):
    """Tolerates fields we do not know (clients send vendor extensions) and logs each name once;
    refuses known ones we do not support (``unsupported_fields``), never by silently ignoring them."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    # field name -> value that means "not used"; anything else is a clear 400.
    unsupported_fields: ClassVar[dict[str, Any]] = {}

    @model_validator(mode="after")
    def _checked(self, info: ValidationInfo) -> Self:
        self._log_unknown_fields()
        if BACKGROUND in (info.context or {}) and getattr(self, "stream", False):
            raise invalid_request("Background jobs cannot stream; drop `stream` or call the endpoint directly.",
                                  param="body.stream")
        self._refuse_unsupported()
        return self

    def _log_unknown_fields(self) -> None:
        for name in self.model_extra or {}:
            key = f"{type(self).__name__}.{name}"
            if key not in _LOGGED_EXTRAS and name not in self.unsupported_fields:
                _LOGGED_EXTRAS.add(key)
                log.info("ignoring unknown field `%s` in %s (logged once)", name, type(self).__name__)

    def _refuse_unsupported(self) -> None:
        for name, neutral in self.unsupported_fields.items():
            value = getattr(self, name, None) if name in type(self).model_fields else (self.model_extra or {}).get(name)
            if value is not None and value != neutral:
                raise invalid_request(f"`{name}` is not supported by this server yet.", param=name)


class SamplingFields(OpenAIModel):
    """Fields common to chat and text completions, in the order of the OpenAI reference, then the
    vLLM extensions clients commonly send (top_k, min_p, repetition_penalty, stop_token_ids, ignore_eos)."""

    model: str
    frequency_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    logit_bias: Optional[dict[str, float]] = None
    max_tokens: Optional[int] = Field(None, ge=1)
    n: int = Field(1, ge=1, le=128)
    presence_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    stream: bool = False
    stream_options: Optional[dict[str, Any]] = None
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    user: Optional[str] = None
    top_k: Optional[int] = Field(None, ge=-1)
    min_p: Optional[float] = Field(None, ge=0.0, le=1.0)
    repetition_penalty: Optional[float] = Field(None, ge=0.01, le=10.0)
    stop_token_ids: Optional[list[int]] = None
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: Optional[Union[str, list[str]]]) -> Optional[list[str]]:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: Optional[dict[str, float]]) -> Optional[dict[str, float]]:
        for key, value in (v or {}).items():
            if not key.lstrip("-").isdigit() or int(key) < 0:
                raise ValueError(f"logit_bias keys are token ids; {key!r} is not one")
            if not -100 <= value <= 100:
                raise ValueError(f"logit_bias values lie in [-100, 100]; {key}: {value}")
        return v

    @model_validator(mode="after")
    def _stream_options(self) -> Self:
        if self.stream_options is not None and not self.stream:
            raise invalid_request("`stream_options` is only allowed when `stream` is true.", param="stream_options")
        return self

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    def sampling(self, max_tokens: Optional[int], **extra: Any) -> SamplingParams:
        """The one place request fields become decoding parameters (request > server defaults)."""
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(0, self.top_k or 0),
            min_p=self.min_p or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()},
            seed=self.seed,
            stop=list(self.stop or []),
            stop_token_ids=list(self.stop_token_ids or []),
            ignore_eos=self.ignore_eos,
            **extra,
        )


def text_list(value: Union[str, list[str], list[int], list[list[int]]], field: str, plural: str) -> list[str]:
    """A string or a list of strings (``prompt``, ``input``) as a list; token ids are refused."""
    if isinstance(value, str):
        texts = [value]
    elif not value:
        raise invalid_request(f"`{field}` must not be empty.", param=field)
    elif all(isinstance(x, str) for x in value):
        texts = [x for x in value if isinstance(x, str)]
    else:
        raise invalid_request(f"Token-id {plural} are not supported by this server yet; send text.", param=field)
    # An empty string has no tokens to start from (models without a BOS token would get none).
    if any(t == "" for t in texts):
        raise invalid_request(f"`{field}` must not contain empty strings.", param=field)
    return texts
