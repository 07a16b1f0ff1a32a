"""Job payloads, results and stream events: defined once, used by the front and the worker.

These are the only shapes that cross Redis. They hold native values (strings, token counts), not
HTTP or OpenAI wire shapes: the front translates requests into them and results back out.
"""

from __future__ import annotations

import json
from typing import Any, Literal, NamedTuple, Optional, Self, Union

from pydantic import BaseModel, Field, TypeAdapter, model_validator

from tasks.contract.records import JobClass

# What a job record's ``endpoint`` says made the job (the front's metrics label it the same way).
Endpoint = Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages",
                   "/v1/messages/count_tokens", "initialize", "tokenize"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL_STATUSES: frozenset[JobStatus] = frozenset({"succeeded", "failed", "cancelled"})

TASK_GENERATE = "llmhost.generate"
TASK_EMBED = "llmhost.embed"
TASK_INITIALIZE = "llmhost.initialize"
TASK_TOKENIZE = "llmhost.tokenize"


class ToolCall(BaseModel):
    """One function call: ``arguments`` is a JSON string, as OpenAI sends and returns it."""

    id: str
    name: str
    arguments: str


class Message(BaseModel):
    """A chat turn with its content already flattened to text by the front. An assistant turn may
    carry ``tool_calls``; a ``tool`` turn is the result of the call ``tool_call_id``."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: Optional[list[ToolCall]] = None
    tool_call_id: Optional[str] = None


# Values valid on the wire that would break a worker's arithmetic: a temperature like 5e-324
# overflows logits / temperature, a top_p like that vanishes in float32, and the sampler meets NaN.
# Such values mean greedy decoding, so that is what they become.
MIN_TEMPERATURE = 1e-4  # below: greedy (a softmax this sharp is an argmax anyway)
MIN_TOP_P = 1e-6  # below: the nucleus is the single most likely token, which 1e-6 keeps too


class SamplingParams(BaseModel):
    """Per-sequence decoding parameters, resolved by the front (request > defaults) in one place."""

    max_tokens: Optional[int] = Field(None, ge=1, description="None = until the context is full")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 = off")
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, ge=0.01, le=10.0)
    logit_bias: dict[int, float] = Field(default_factory=dict)
    seed: Optional[int] = None
    stop: list[str] = Field(default_factory=list)
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = False
    logprobs: Optional[int] = Field(None, ge=0, le=20, description="top alternatives per token; None = no logprobs")
    prompt_logprobs: Optional[int] = Field(None, ge=0, le=20, description="logprobs of the prompt's own tokens (echo)")
    # Structured output: {"type": "json_object"} or {"type": "json_schema", "schema": {...}}.
    constraint: Optional[dict[str, Any]] = None

    @model_validator(mode="after")
    def _stable(self) -> Self:
        if 0.0 < self.temperature < MIN_TEMPERATURE:
            self.temperature = 0.0
        if self.top_p < MIN_TOP_P:
            self.top_p = MIN_TOP_P
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def plain(self) -> bool:
        """Nothing but temperature/top_p: the fast path of the sampler."""
        return (not self.top_k and not self.min_p and not self.presence_penalty and not self.frequency_penalty
                and self.repetition_penalty == 1.0 and not self.logit_bias and self.constraint is None)


class JobBase(BaseModel):
    job_id: str
    model: str
    deadline: float = Field(description="unix time after which the job is not worth running")
    # The pub/sub channel of the API process waiting on this job (None: nobody waits, e.g. /v1/jobs).
    reply_to: Optional[str] = None
    # The X-Request-ID of the HTTP request that made the job, for the worker's log lines.
    request_id: Optional[str] = None
    # Its priority class: which of the model's queues carries it, and its place in the batch.
    klass: JobClass = "interactive"
    # Seconds its worker keeps the job's events in a Redis Stream (records.events_key) that any API
    # process can read from the first, as often as it likes (resumable background responses);
    # 0: not kept, only published to `reply_to`.
    events_ttl: int = Field(0, ge=0)


class GenerateJob(JobBase):
    """Either ``messages`` (a chat, templated by the model family) or ``prompts`` (raw text)."""

    messages: Optional[list[Message]] = None
    prompts: Optional[list[str]] = None
    n: int = Field(1, ge=1, le=128, description="choices per prompt; choice i of prompt p has index p * n + i")
    echo: bool = False
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    stream: bool = False
    # Tool calling (chat only): OpenAI function specs {"name", "description", "parameters"};
    # tool_choice normalised by the front to "none" | "auto" | "required" | {"name": "<fn>"}.
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Union[str, dict[str, Any]] = "auto"
    parallel_tool_calls: bool = True
    # Variables for the chat template (vLLM's ``chat_template_kwargs``, e.g. ``{"enable_thinking":
    # false}``), ``reasoning_effort`` among them when the request set it.
    chat_template_kwargs: Optional[dict[str, Any]] = None


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
    cpu_kernels: bool = True  # bf16 and fp32 on CPU: prepacked, fused linear layers (handlers/cpu_linear.py)


class TokenizeJob(JobBase):
    """``/tokenize`` (messages or prompt → ids) and ``/detokenize`` (ids → text), model-aware."""

    messages: Optional[list[Message]] = None
    prompt: Optional[str] = None
    add_special_tokens: bool = True
    tokens: Optional[list[int]] = None  # detokenize


class InitializeJob(JobBase):
    options: LoadOptions


class TokenLogprob(BaseModel):
    """One position: the token (text and exact bytes), its log-probability, and the most likely
    alternatives as (text, logprob, bytes)."""

    token: str
    logprob: Optional[float]  # None for the first prompt token (nothing predicts it)
    bytes: list[int] = Field(default_factory=list)
    top: list[tuple[str, float, list[int]]] = Field(default_factory=list)


class Output(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length", "cancelled", "tool_calls"]
    prompt_tokens: int
    completion_tokens: int
    logprobs: Optional[list[TokenLogprob]] = None
    prompt_logprobs: Optional[list[TokenLogprob]] = None
    tool_calls: Optional[list[ToolCall]] = None
    stop_sequence: Optional[str] = None  # the request's stop string that ended the text, if one did
    # The thought of a reasoning model, apart from ``text`` (None: the model wrote none); its tokens,
    # tags included, count in ``completion_tokens`` too.
    reasoning: Optional[str] = None
    reasoning_tokens: int = 0


class Usage(NamedTuple):
    """The tokens a job consumed: what a response's ``usage`` reports and the metrics count."""

    prompt: int
    completion: int = 0
    reasoning: int = 0  # of the completion tokens, those spent on a thought


class GenerateResult(BaseModel):
    outputs: list[Output]
    n: int = 1  # choices per prompt: outputs p*n .. p*n+n-1 share prompt p

    def usage(self) -> Usage:
        # Each prompt counts once, however many choices (n) were drawn from it.
        prompts = {o.index // self.n: o.prompt_tokens for o in self.outputs}
        return Usage(sum(prompts.values()), sum(o.completion_tokens for o in self.outputs),
                     sum(o.reasoning_tokens for o in self.outputs))


class EmbedResult(BaseModel):
    vectors: list[list[float]]
    prompt_tokens: int

    def usage(self) -> Usage:
        return Usage(self.prompt_tokens)


class Event(BaseModel):
    """One event of a job, on its reply channel (:func:`reply_message`, :func:`read_reply`).

    ``started``: the worker accepted the job (prompt validated); ``delta``: text for choice
    ``index`` (answer ``text``, or ``reasoning`` of a thought: one of the two per event); ``done``:
    the final result; ``error``: a :class:`~tasks.errors.JobError` dict.
    """

    type: Literal["started", "delta", "done", "error"]
    job: str = ""
    index: int = 0
    text: str = ""
    reasoning: str = ""
    logprobs: Optional[list[TokenLogprob]] = None
    result: Optional[dict[str, Any]] = None
    error: Optional[dict[str, Any]] = None


_EVENT_LIST: TypeAdapter[list[Event]] = TypeAdapter(list[Event])


def reply_message(events_json: list[str]) -> str:
    """One pub/sub message for events (each ``Event.model_dump_json``) bound for one reply channel:
    the engine thread sends a step's deltas for every job of one front as one message (a JSON array,
    in order), so that the front reads one message per step instead of one per stream."""
    return events_json[0] if len(events_json) == 1 else "[" + ",".join(events_json) + "]"


def read_reply(data: bytes | str) -> tuple[list[Event], int]:
    """The events of one reply-channel message, an event (a JSON object) or several (an array), and
    how many of them could not be read (skipped: one unreadable event, say of a type a newer worker
    sends, must not cost the other streams their text of that step; the whole message when it is
    neither form)."""
    if data[:1] not in (b"[", "["):
        try:
            return [Event.model_validate_json(data)], 0
        except ValueError:
            return [], 1
    try:
        return _EVENT_LIST.validate_json(data), 0
    except ValueError:
        pass
    try:
        items = json.loads(data)
    except ValueError:
        return [], 1
    events = []
    for item in items:
        try:
            events.append(Event.model_validate(item))
        except ValueError:
            continue
    return events, len(items) - len(events)
