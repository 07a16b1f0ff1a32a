"""``POST /v1/completions`` request."""

from __future__ import annotations

from typing import Any, ClassVar, Optional, Union

from pydantic import Field

from tasks.errors import invalid_request

from .common import SamplingFields

# OpenAI's default for the legacy completions endpoint.
DEFAULT_COMPLETION_TOKENS = 16


class CompletionRequest(SamplingFields):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: Optional[int] = Field(DEFAULT_COMPLETION_TOKENS, ge=1)
    echo: Optional[bool] = None
    logprobs: Optional[int] = None
    best_of: Optional[int] = None
    suffix: Optional[str] = None
    frequency_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    logit_bias: Optional[dict[str, float]] = None

    unsupported_fields: ClassVar[dict[str, Any]] = {"echo": False, "logprobs": 0, "best_of": 1, "suffix": "",
                    "frequency_penalty": 0.0, "presence_penalty": 0.0, "logit_bias": {}}

    def check(self) -> None:
        self.check_common()

    def prompts(self) -> list[str]:
        p = self.prompt
        if isinstance(p, str):
            texts = [p]
        elif p and all(isinstance(x, str) for x in p):
            texts = list(p)  # type: ignore[arg-type]
        elif not p:
            raise invalid_request("`prompt` must not be empty.", param="prompt")
        else:
            raise invalid_request("Token-id prompts are not supported by this server yet; send text.", param="prompt")
        # An empty string has no tokens to start from (models without a BOS token would get none).
        if any(t == "" for t in texts):
            raise invalid_request("`prompt` must not contain empty strings.", param="prompt")
        return texts
