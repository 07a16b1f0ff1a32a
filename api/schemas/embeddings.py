"""``POST /v1/embeddings`` request."""

from __future__ import annotations

from typing import Literal, Optional, Self, Union

from pydantic import Field, PrivateAttr, model_validator

from tasks.contract.errors import invalid_request
from tasks.contract.payloads import EmbedJob

from .common import OpenAIModel, text_list

MAX_INPUTS = 2048


class EmbeddingRequest(OpenAIModel):
    model: str
    input: Union[str, list[str], list[int], list[list[int]]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = Field(None, ge=1)
    user: Optional[str] = None

    _inputs: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _resolved(self) -> Self:
        texts = text_list(self.input, "input", "inputs")
        if len(texts) > MAX_INPUTS:
            raise invalid_request(f"`input` may hold at most {MAX_INPUTS} items.", param="input")
        self._inputs = texts
        return self

    def inputs(self) -> list[str]:
        return list(self._inputs)

    def to_job(self, job_id: str, deadline: float, request_id: Optional[str]) -> EmbedJob:
        return EmbedJob(job_id=job_id, model=self.model, inputs=self.inputs(), dimensions=self.dimensions,
                        deadline=deadline, request_id=request_id)
