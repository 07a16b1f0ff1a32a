"""``POST /v1/jobs``: an endpoint's body, run in the background and polled."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from tasks.contract.errors import invalid_request

from ..errors import from_validation_error
from .chat import ChatCompletionRequest
from .completions import CompletionRequest
from .embeddings import EmbeddingRequest

BODIES: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
}


class JobRequest(BaseModel):
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
    body: dict[str, Any]

    def parsed_body(self) -> BaseModel:
        try:
            body = BODIES[self.endpoint].model_validate(self.body)
        except ValidationError as e:
            raise from_validation_error(e, prefix="body") from None
        if getattr(body, "stream", False):
            raise invalid_request("Background jobs cannot stream; drop `stream` or call the endpoint directly.",
                                  param="body.stream")
        return body
