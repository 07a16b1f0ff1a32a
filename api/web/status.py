"""``GET /v1/status``: the fleet at a glance for the page's status view, from the gateway's own calls.

Each queue entry has its depth per priority class (``classes``: interactive / background /
batch → jobs); ``batches`` lists the active batches and the last few finished ones with their
``request_counts``. Token totals are cumulative; the page turns the deltas between two polls into
tokens/s, so the server keeps no history.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Literal, Optional

from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field

from tasks.contract.catalog import list_models
from tasks.queue.presence import queue_depths

if TYPE_CHECKING:
    from ..batches.service import Batches
    from ..gateway import Gateway


class WorkerStatus(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    name: str
    model: str
    kind: str = Field(description="chat | embedding; empty while loading")
    state: str = Field(description="loading | ready | failed")
    device: str
    dtype: str
    running: int = Field(description="sequences being decoded")
    waiting: int = Field(description="sequences taken by the worker, waiting for a batch slot")
    peak_batch: int
    error: str = ""
    started_at: float
    heartbeat_at: float


class QueueStatus(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    model: str
    depth: int = Field(description="jobs in the model's queues not yet taken by a worker")
    classes: dict[str, int] = Field(description="the same per priority class: interactive, background, batch")


class TokenTotals(BaseModel):
    """Tokens of generations finished through this API process since it started, per model."""

    generated: dict[str, float]
    prompt: dict[str, float]


class BatchCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchStatus(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    id: str
    status: str = Field(description="validating | in_progress | finalizing | completed | failed | expired | "
                                    "cancelling | cancelled")
    endpoint: str
    model: Optional[str] = Field(description="the model of its lines when they name one only")
    created_at: int
    request_counts: BatchCounts


class StatusResponse(BaseModel):
    object: Literal["status"] = "status"
    time: float = Field(description="server time (Unix seconds) of this reading")
    workers: list[WorkerStatus]
    queues: list[QueueStatus]
    tokens: TokenTotals
    batches: list[BatchStatus] = Field(description="active batches, then the last few finished, newest first")


def _per_model(counter: Counter) -> dict[str, float]:
    return {s.labels["model"]: s.value for metric in counter.collect() for s in metric.samples
            if s.name.endswith("_total")}


async def fleet_status(gw: "Gateway", batches: "Batches") -> StatusResponse:
    workers = await gw.workers(fresh=True)
    catalog = await asyncio.to_thread(list_models, gw.settings.models_dir)
    models = sorted({m.id for m in catalog} | {w.model for w in workers if w.model})
    depths = await queue_depths(gw.redis, models)
    served = {w.model for w in workers}
    return StatusResponse(
        time=time.time(),
        workers=[WorkerStatus.model_validate(vars(w)) for w in sorted(workers, key=lambda w: (w.model, w.name))],
        # A folder nobody serves and nothing waits for is left out, as in /metrics.
        queues=[QueueStatus(model=m, depth=sum(depths[m].values()), classes=depths[m])
                for m in models if m in served or any(depths[m].values())],
        tokens=TokenTotals(generated=_per_model(gw.metrics.generation_tokens),
                           prompt=_per_model(gw.metrics.prompt_tokens)),
        batches=[BatchStatus.model_validate(b) for b in await batches.recent()],
    )
