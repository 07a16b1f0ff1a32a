"""``POST /v1/embeddings`` request."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field

from tasks.contract.errors import invalid_request

from .common import OpenAIModel


class EmbeddingRequest(OpenAIModel):
    model: str
    input: Union[str, list[str], list[int], list[list[int]]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = Field(None, ge=1)
    user: Optional[str] = None

    def check(self) -> None:
        self.refuse_unsupported()

    def inputs(self) -> list[str]:
        x = self.input
        if isinstance(x, str):
            texts = [x]
        elif x and all(isinstance(s, str) for s in x):
            texts = list(x)  # type: ignore[arg-type]
        elif not x:
            raise invalid_request("`input` must not be empty.", param="input")
        else:
            raise invalid_request("Token-id inputs are not supported by this server yet; send text.", param="input")
        if any(t == "" for t in texts):
            raise invalid_request("`input` must not contain empty strings.", param="input")
        if len(texts) > 2048:
            raise invalid_request("`input` may hold at most 2048 items.", param="input")
        return texts
