"""``POST /v1/completions`` request."""

from __future__ import annotations

from typing import Any, ClassVar, Optional, Union

from pydantic import Field

from tasks.contract.errors import invalid_request

from .common import SamplingFields

# OpenAI's default for the legacy completions endpoint.
DEFAULT_COMPLETION_TOKENS = 16


class CompletionRequest(SamplingFields):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: Optional[int] = Field(DEFAULT_COMPLETION_TOKENS, ge=1)
    echo: bool = False
    logprobs: Optional[int] = Field(None, ge=0, le=20)
    best_of: Optional[int] = None
    suffix: Optional[str] = None

    unsupported_fields: ClassVar[dict[str, Any]] = {"suffix": ""}

    def check(self) -> None:
        self.check_common()
        if self.best_of is not None and self.best_of != self.n:
            raise invalid_request("`best_of` other than `n` is not supported (use `n`).", param="best_of")

    def to_sampling(self):  # noqa: ANN201
        # echo with logprobs: the prompt's own tokens get logprobs too, as evaluation harnesses need.
        return self.sampling(self.max_tokens, logprobs=self.logprobs,
                             prompt_logprobs=self.logprobs if self.echo and self.logprobs is not None else None)

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
