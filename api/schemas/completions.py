"""``POST /v1/completions`` request."""

from __future__ import annotations

from typing import Any, ClassVar, Optional, Self, Union

from pydantic import Field, PrivateAttr, model_validator

from tasks.contract.errors import invalid_request
from tasks.contract.payloads import GenerateJob, SamplingParams

from .common import SamplingFields, text_list

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

    _prompts: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _resolved(self) -> Self:
        if self.best_of is not None and self.best_of != self.n:
            raise invalid_request("`best_of` other than `n` is not supported (use `n`).", param="best_of")
        if self.stream and self.echo and self.logprobs is not None:
            raise invalid_request("`echo` with `logprobs` is not supported when streaming; drop `stream`.",
                                  param="echo")
        self._prompts = text_list(self.prompt, "prompt", "prompts")
        return self

    def prompts(self) -> list[str]:
        return list(self._prompts)

    def to_sampling(self) -> SamplingParams:
        # echo with logprobs: the prompt's own tokens get logprobs too, as evaluation harnesses need.
        return self.sampling(self.max_tokens, logprobs=self.logprobs,
                             prompt_logprobs=self.logprobs if self.echo and self.logprobs is not None else None)

    def to_job(self, job_id: str, deadline: float, request_id: Optional[str]) -> GenerateJob:
        return GenerateJob(job_id=job_id, model=self.model, prompts=self.prompts(), n=self.n, echo=self.echo,
                           sampling=self.to_sampling(), stream=self.stream, deadline=deadline, request_id=request_id)
