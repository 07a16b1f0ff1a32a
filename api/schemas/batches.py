"""``POST /v1/batches`` request."""

from __future__ import annotations

from typing import Optional, Self

from pydantic import model_validator

from tasks.contract.errors import invalid_request

from .common import OpenAIModel

BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
WINDOWS = ("24h",)
MAX_METADATA = 16


class BatchCreateRequest(OpenAIModel):
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: Optional[dict[str, str]] = None

    @model_validator(mode="after")
    def _checked_fields(self) -> Self:
        if self.endpoint not in BATCH_ENDPOINTS:
            raise invalid_request(f"`{self.endpoint}` is not an endpoint batches can run; use one of "
                                  f"{', '.join(BATCH_ENDPOINTS)}.", param="endpoint", code="invalid_value")
        if self.completion_window not in WINDOWS:
            raise invalid_request(f"completion_window must be `24h`, not `{self.completion_window}`.",
                                  param="completion_window", code="invalid_value")
        meta = self.metadata or {}
        if len(meta) > MAX_METADATA:
            raise invalid_request(f"metadata holds at most {MAX_METADATA} keys.", param="metadata")
        for key, value in meta.items():
            if len(key) > 64 or len(value) > 512:
                raise invalid_request("metadata keys are at most 64 characters and values at most 512.",
                                      param=f"metadata.{key[:64]}")
        return self
