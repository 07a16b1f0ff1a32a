"""Job payloads, results and stream events: defined once, used by the front and the worker.

These are the only shapes that cross Redis. They hold native values (strings, token counts), not
HTTP or OpenAI wire shapes: the front translates requests into them and results back out.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, Field

Endpoint = Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "initialize"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

TASK_GENERATE = "llmhost.generate"
TASK_EMBED = "llmhost.embed"
TASK_INITIALIZE = "llmhost.initialize"


class Message(BaseModel):
    """A chat turn with its content already flattened to text by the front."""

    role: Literal["system", "user", "assistant"]
    content: str


class SamplingParams(BaseModel):
    max_tokens: Optional[int] = Field(None, ge=1, description="None = until the context is full")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: Optional[int] = None
    stop: list[str] = Field(default_factory=list)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class JobBase(BaseModel):
    job_id: str
    model: str
    deadline: float = Field(description="unix time after which the job is not worth running")
    # The pub/sub channel of the API process waiting on this job (None: nobody waits, e.g. /v1/jobs).
    reply_to: Optional[str] = None


class GenerateJob(JobBase):
    """Either ``messages`` (a chat, templated by the model family) or ``prompts`` (raw text)."""

    messages: Optional[list[Message]] = None
    prompts: Optional[list[str]] = None
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    stream: bool = False


class EmbedJob(JobBase):
    inputs: list[str]
    dimensions: Optional[int] = None


class LoadOptions(BaseModel):
    """How a worker loads its model; the ``initialize`` job sends a new set."""

    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    quantization: Literal["none", "8bit", "4bit"] = "none"
    max_context: Optional[int] = Field(None, ge=16)
    torch_threads: int = Field(0, ge=0)


class InitializeJob(JobBase):
    options: LoadOptions


class Output(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length", "cancelled"]
    prompt_tokens: int
    completion_tokens: int


class GenerateResult(BaseModel):
    outputs: list[Output]


class EmbedResult(BaseModel):
    vectors: list[list[float]]
    prompt_tokens: int


class Event(BaseModel):
    """One message on a job's pub/sub channel.

    ``started``: the worker accepted the job (prompt validated); ``delta``: text for choice
    ``index``; ``done``: the final result; ``error``: a :class:`~tasks.errors.JobError` dict.
    """

    type: Literal["started", "delta", "done", "error"]
    job: str = ""
    index: int = 0
    text: str = ""
    result: Optional[dict[str, Any]] = None
    error: Optional[dict[str, Any]] = None
