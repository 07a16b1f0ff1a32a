"""``POST /v1/jobs``: an endpoint's body, run in the background and polled."""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ValidationError

from ..errors import from_validation_error
from .chat import ChatCompletionRequest
from .common import BACKGROUND
from .completions import CompletionRequest
from .embeddings import EmbeddingRequest

BackgroundBody = Union[ChatCompletionRequest, CompletionRequest, EmbeddingRequest]

BODIES: dict[str, type[BackgroundBody]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
}


class JobRequest(BaseModel):
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
    body: dict[str, Any]

    def parsed_body(self) -> BackgroundBody:
        """The body checked as its endpoint checks it; a background job cannot stream."""
        try:
            return BODIES[self.endpoint].model_validate(self.body, context={BACKGROUND: True})
        except ValidationError as e:
            raise from_validation_error(e, prefix="body") from None
