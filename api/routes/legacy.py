"""``/old/*``: the first LLM-Host API, on the same machinery as ``/v1``.

``POST /old/initialize`` enqueues a reload of a model with new options (answers 202 and a job id);
``POST /old/generate`` answers ``{"job_id", "model", "text", "finish_reason", "usage"}``;
``POST /old/stream`` sends SSE events ``token`` (``{"text"}``), then ``done`` or ``error``;
``GET /old/status`` reports Redis, workers and models, or one job with ``?job_id=``.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Optional, assert_never

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sse_starlette import EventSourceResponse

from tasks.contract.errors import JobError
from tasks.contract.payloads import GenerateResult
from tasks.queue.events import Failed, Finished, ReasoningDelta, TextDelta

from ..deps import GatewayDep, SettingsDep
from ..errors import from_validation_error
from ..gateway import Gateway, Submitted
from ..responses import usage
from ..schemas.chat import ChatCompletionRequest
from ..schemas.completions import CompletionRequest
from ..schemas.legacy import GenerateRequest, InitializeRequest
from ..sse import frame, sse_response

router = APIRouter(prefix="/old", tags=["legacy"])


def _as_openai(req: GenerateRequest, default_model: str, stream: bool) -> ChatCompletionRequest | CompletionRequest:
    common: dict[str, Any] = {
        "model": req.model or default_model, "max_tokens": req.max_new_tokens, "temperature": req.temperature,
        "top_p": req.top_p, "seed": req.seed, "stop": req.stop, "stream": stream,
    }
    if (req.prompt is None) == (req.messages is None):
        raise JobError("Give exactly one of `prompt` or `messages`.", status_code=400, param="prompt")
    try:
        if req.messages is not None:
            return ChatCompletionRequest.model_validate({**common, "messages": req.messages})
        return CompletionRequest.model_validate({**common, "prompt": req.prompt})
    except ValidationError as e:  # e.g. an empty stop string: a 400 naming the field, not a 500
        raise from_validation_error(e) from None


async def _open(gw: Gateway, req: ChatCompletionRequest | CompletionRequest) -> Submitted[GenerateResult]:
    if isinstance(req, ChatCompletionRequest):
        return await gw.stream_chat(req)
    return await gw.stream_completion(req)


@router.post("/initialize", status_code=202)
async def initialize(req: InitializeRequest, gw: GatewayDep, settings: SettingsDep) -> JSONResponse:
    view = await gw.initialize(req.model, req.options(settings.device))
    return JSONResponse({"job_id": view["id"], **view}, status_code=202)


@router.post("/generate")
async def generate(req: GenerateRequest, gw: GatewayDep, settings: SettingsDep) -> dict[str, Any]:
    sub = await _open(gw, _as_openai(req, settings.default_models[0], stream=False))
    out = (await sub.watch.result()).outputs[0]
    return {"job_id": sub.job_id, "model": sub.model, "text": out.text, "finish_reason": out.finish_reason,
            "usage": usage(out.prompt_tokens, out.completion_tokens)}


@router.post("/stream")
async def stream(req: GenerateRequest, gw: GatewayDep, settings: SettingsDep) -> EventSourceResponse:
    sub = await _open(gw, _as_openai(req, settings.default_models[0], stream=True))
    return sse_response(_events(sub))


async def _events(sub: Submitted[GenerateResult]) -> AsyncIterator[bytes]:
    """The first API's stream: ``token`` per delta, then ``done`` (the whole text) or ``error``."""
    async with sub.watch as events:
        async for event in events:
            match event:
                case TextDelta(text=text):
                    yield frame(json.dumps({"text": text}), event="token")
                case ReasoningDelta():
                    pass  # this API shows the answer only
                case Finished(result):
                    out = result.outputs[0]
                    yield frame(json.dumps({"job_id": sub.job_id, "text": out.text, "finish_reason": out.finish_reason,
                                            "usage": usage(out.prompt_tokens, out.completion_tokens)}), event="done")
                case Failed(error):
                    yield frame(json.dumps(error.envelope()), event="error")
                case _:
                    assert_never(event)


@router.get("/status")
async def status(gw: GatewayDep, job_id: Optional[str] = None) -> dict[str, Any]:
    if job_id:
        return await gw.job_view(job_id)
    ready, info = await gw.ready()
    workers = [vars(w) for w in await gw.workers()]
    return {"ready": ready, **info, "workers": workers, "models": await gw.model_cards()}
