"""What the Responses routes call: create a response (sync, streamed or in the background), read it,
stream it again, cancel or delete it, and list its input items.

A response is one generation job, under the response's id. A sync one is an interactive job watched
over pub/sub (``JobWatch``) and stored once it ends. A background one is a durable job of the
background class whose worker keeps its events (``JobBase.events_ttl``): it is stored when created,
polled from its job record, and streamed, from the first event or after any, from its kept events
(``KeptEvents``) by whichever API process is asked. The job record and the kept events live as
long as the stored response; the final object is written into it the first time someone sees it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable, Literal, Optional

from tasks.contract.errors import JobError, invalid_request
from tasks.contract.logging_setup import request_id_var
from tasks.contract.payloads import TASK_GENERATE, GenerateJob, GenerateResult
from tasks.queue.kept_events import KeptEvents
from tasks.queue.response_store import ResponseStore

from ..gateway import Gateway, Submitted
from ..schemas.response_items import Item
from ..schemas.responses import ResponseRequest
from . import objects
from .objects import FINAL, StoredResponse
from .stream import ResponseEvents, response_frames

ENDPOINT: Literal["/v1/responses"] = "/v1/responses"


def not_found(response_id: str, param: str) -> JobError:
    return JobError(f"No response with id `{response_id}` (unknown, deleted, expired, or made with `store: false`).",
                    status_code=404, type="invalid_request_error", code="response_not_found", param=param)


class Responses:
    def __init__(self, gateway: Gateway, store: ResponseStore) -> None:
        self.gw = gateway
        self.jobs = gateway.jobs
        self.settings = gateway.settings
        self.store = store

    # --- creating ------------------------------------------------------------------------------

    async def create(self, req: ResponseRequest) -> dict[str, Any]:
        stored, job = await self._prepare(req, background=False)
        sub: Submitted[GenerateResult] = await self.gw._submit(TASK_GENERATE, job, ENDPOINT, "chat")
        final = objects.finished(stored, await sub.watch.result())
        await self._remember(req, stored, final)
        return final

    async def stream(self, req: ResponseRequest) -> AsyncIterator[bytes]:
        """A sync stream; its worker accepted the prompt first, so that a refusal is an HTTP error."""
        stored, job = await self._prepare(req, background=False)
        sub = await self.gw._open_stream(job, ENDPOINT)

        async def end(final: dict[str, Any]) -> None:
            await self._remember(req, stored, final)
        return _watched(sub, ResponseEvents(stored, "in_progress"), end)

    async def create_background(self, req: ResponseRequest) -> dict[str, Any]:
        """Stored and queued, answered at once (``queued``)."""
        stored, job = await self._prepare(req, background=True)
        await self.gw.ensure_served(job.model, "chat")
        await self.store.create(stored.id, stored.doc())
        try:  # a full queue refuses it (429): then nothing of it is kept
            await self.gw._enqueue(TASK_GENERATE, job, ENDPOINT, {}, watch=False, ttl=job.events_ttl)
        except BaseException:
            await self.store.delete(stored.id)
            raise
        return objects.response_object(stored, "queued")

    async def _prepare(self, req: ResponseRequest, background: bool) -> tuple[StoredResponse, GenerateJob]:
        history = await self._history(req.previous_response_id)
        response_id, now = f"resp_{uuid.uuid4().hex}", time.time()
        deadline = now + (self.settings.job_ttl if background else self.settings.request_timeout)
        job = req.to_job(response_id, deadline, request_id_var.get(), history)
        if background:  # behind interactive traffic; its record and events live as long as the response
            job.klass, job.events_ttl = "background", max(self.settings.job_ttl, self.settings.response_ttl)
        stored = StoredResponse(id=response_id, created_at=int(now), params=req.echo(),
                                input_items=history + req.items, job_id=response_id if background else None)
        return stored, job

    async def _history(self, previous_id: Optional[str]) -> list[Item]:
        """The conversation ``previous_response_id`` ended with: its input, then its output."""
        if previous_id is None:
            return []
        previous = await self._load(previous_id, "previous_response_id")
        final = await self._current(previous)
        if final["status"] not in FINAL:
            raise invalid_request(f"The response `{previous_id}` is still {final['status']}; continue it once it has "
                                  "ended.", param="previous_response_id")
        return objects.conversation(previous, final)

    async def _remember(self, req: ResponseRequest, stored: StoredResponse, final: dict[str, Any]) -> None:
        if req.stored:
            stored.response = final
            await self.store.create(stored.id, stored.doc())

    # --- reading -------------------------------------------------------------------------------

    async def _load(self, response_id: str, param: str = "response_id") -> StoredResponse:
        doc = await self.store.get(response_id)
        if doc is None:
            raise not_found(response_id, param)
        return StoredResponse.model_validate(doc)

    async def view(self, response_id: str) -> dict[str, Any]:
        return await self._current(await self._load(response_id))

    async def _current(self, stored: StoredResponse) -> dict[str, Any]:
        """The response now: final once stored so; else from its job record (a dead worker's job
        is settled on the way: delivered again, or failed)."""
        if stored.response is not None or stored.job_id is None:
            return stored.response or objects.response_object(stored, "failed")
        rec = await self.jobs.store.get(stored.job_id)
        rec = await self.jobs.reconcile(stored.job_id, rec) if rec else None
        status = rec["status"] if rec else "failed"
        if status in ("queued", "running"):
            return objects.response_object(stored, "queued" if status == "queued" else "in_progress")
        if status == "succeeded" and rec:
            final = objects.finished(stored, GenerateResult.model_validate(rec.get("result") or {}))
        else:
            error = (rec or {}).get("error") or {"message": "The job of this response expired.", "code": "expired"}
            final = objects.ended_with(stored, JobError.from_dict(error))
        await self._settle(stored, final)
        return final

    async def _settle(self, stored: StoredResponse, final: dict[str, Any]) -> None:
        """Write the final object into the stored response, once (never into a deleted one)."""
        if stored.response is None:
            stored.response = final
            await self.store.update(stored.id, stored.doc())

    async def replay(self, response_id: str, after: int = -1) -> AsyncIterator[bytes]:
        """A background response's stream, from the event after ``after``, whichever process made it."""
        stored = await self._load(response_id)
        if stored.job_id is None:
            raise invalid_request("Only background responses can be streamed again; this one was not made with "
                                  "`background: true`.", param="stream")

        async def end(final: dict[str, Any]) -> None:
            await self._settle(stored, final)
        return response_frames(KeptEvents(self.jobs, stored.job_id), ResponseEvents(stored, "queued"), after, end)

    async def input_items(self, response_id: str, limit: int, after: Optional[str],
                          order: Literal["asc", "desc"]) -> dict[str, Any]:
        items = [item.model_dump() for item in (await self._load(response_id)).input_items]
        if order == "desc":
            items.reverse()
        if after is not None:
            at = next((i for i, item in enumerate(items) if item["id"] == after), None)
            if at is None:
                raise invalid_request(f"No input item `{after}` in this response.", param="after")
            items = items[at + 1:]
        page = items[:limit]
        return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}

    # --- ending --------------------------------------------------------------------------------

    async def cancel(self, response_id: str) -> dict[str, Any]:
        """A queued one never runs, a running one stops within a step, an ended one is unchanged."""
        stored = await self._load(response_id)
        if stored.job_id is not None and stored.response is None:
            await self.jobs.cancel(stored.job_id, "cancelled by the client")
        return await self._current(stored)

    async def delete(self, response_id: str) -> dict[str, Any]:
        stored = await self._load(response_id)
        if stored.job_id is not None and stored.response is None:
            await self.jobs.cancel(stored.job_id, "the response was deleted")
        await self.store.delete(response_id, stored.job_id)
        return {"id": response_id, "object": "response.deleted", "deleted": True}


async def _watched(sub: Submitted[GenerateResult], tr: ResponseEvents,
                   end: Callable[[dict[str, Any]], Awaitable[None]]) -> AsyncIterator[bytes]:
    """A sync stream's frames; leaving early (the client went away) cancels its job."""
    async with sub.watch as events:
        async for chunk in response_frames(events, tr, on_end=end):
            yield chunk
