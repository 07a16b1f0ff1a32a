"""The Responses API's streaming contract: one job's typed events as semantic SSE events.

``response.created`` and ``response.in_progress``; a reasoning model's thought as a reasoning item
(``output_item.added``, ``content_part.added``, ``reasoning_text.delta``…, ``reasoning_text.done``,
``content_part.done``, ``output_item.done``), before anything else; the message item (``output_item.added``,
``content_part.added``, ``output_text.delta``…, ``output_text.done``, ``content_part.done``,
``output_item.done``) once there is text; then each function call (``output_item.added``,
``function_call_arguments.delta``/``.done``, ``output_item.done``); then exactly one of
``response.completed`` / ``response.incomplete`` / ``response.failed`` (after an ``error`` event when
the job failed; a cancelled response ends ``response.failed`` with status ``cancelled``).

Events are numbered from 0 by the order they are made, so the same typed events always give the
same events under the same ``sequence_number``: a stream resumed ``starting_after`` N is the same
stream, from N + 1 (the kept events of tasks/queue/kept_events.py are the same for every reader).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterable, AsyncIterator, Awaitable, Callable, Optional, assert_never

from tasks.contract.errors import JobError
from tasks.contract.payloads import GenerateResult, TokenLogprob
from tasks.queue.events import Failed, Finished, JobEvent, ReasoningDelta, TextDelta

from ..json_body import dumps
from ..sse import frame
from . import objects
from .objects import Status, StoredResponse

Event = dict[str, Any]


@dataclass
class ResponseEvents:
    stored: StoredResponse
    first_status: Status  # what `response.created` says: queued (background) or in_progress
    seq: int = 0
    shown: list[str] = field(default_factory=list)  # the text deltas so far
    opened: bool = False  # the message item and its text part were announced
    thought: list[str] = field(default_factory=list)  # the reasoning deltas so far
    thinking: bool = False  # the reasoning item is open
    items: int = 0  # output items announced so far: the next one's output_index
    final: Optional[dict[str, Any]] = None  # the response object the stream ended with

    def _event(self, type: str, **body: Any) -> Event:
        event = {"type": type, "sequence_number": self.seq, **body}
        self.seq += 1
        return event

    def _at(self, item_id: str | None = None) -> dict[str, Any]:
        """Where a message (or, given its id, the reasoning item) part's events point."""
        index = self.items - 1 if item_id is None else 0
        return {"item_id": item_id or objects.message_id(self.stored.id), "output_index": index, "content_index": 0}

    def reasoning(self, text: str) -> list[Event]:
        if self.opened:  # a thought comes before the answer, never after
            return []
        events, rid = [], objects.reasoning_item_id(self.stored.id)
        if not self.thinking:
            self.thinking, self.items = True, self.items + 1
            events += [self._event("response.output_item.added", output_index=0,
                                   item=objects.reasoning_item(self.stored.id, "in_progress", [])),
                       self._event("response.content_part.added", **self._at(rid), part=objects.reasoning_part(""))]
        self.thought.append(text)
        return [*events, self._event("response.reasoning_text.delta", **self._at(rid), delta=text)]

    def _close_thought(self) -> list[Event]:
        if not self.thinking:
            return []
        self.thinking, rid = False, objects.reasoning_item_id(self.stored.id)
        text = "".join(self.thought)
        return [self._event("response.reasoning_text.done", **self._at(rid), text=text),
                self._event("response.content_part.done", **self._at(rid), part=objects.reasoning_part(text)),
                self._event("response.output_item.done", output_index=0,
                            item=objects.reasoning_item(self.stored.id, "completed", [objects.reasoning_part(text)]))]

    def opening(self) -> list[Event]:
        return [self._event("response.created", response=objects.response_object(self.stored, self.first_status)),
                self._event("response.in_progress", response=objects.response_object(self.stored, "in_progress"))]

    def delta(self, text: str, entries: Optional[list[TokenLogprob]] = None) -> list[Event]:
        events = self._open()
        self.shown.append(text)
        return [*events, self._event("response.output_text.delta", **self._at(), delta=text,
                                     logprobs=objects.logprobs(entries))]

    def _open(self) -> list[Event]:
        if self.opened:
            return []
        events = self._close_thought()
        self.opened, self.items = True, self.items + 1
        item = objects.message_item(self.stored.id, "in_progress", [])
        return [*events, self._event("response.output_item.added", output_index=self.items - 1, item=item),
                self._event("response.content_part.added", **self._at(), part=objects.text_part(""))]

    def finished(self, result: GenerateResult) -> list[Event]:
        final = objects.finished(self.stored, result)
        out = result.outputs[0]
        thought = "".join(self.thought)
        missing = (out.reasoning or "")[len(thought):] if (out.reasoning or "").startswith(thought) else ""
        events = self.reasoning(missing) if missing else []  # a delta lost on the way: sent now
        events += self._close_thought()
        shown = "".join(self.shown)
        if len(out.text) > len(shown) and out.text.startswith(shown):  # a delta lost on the way: sent now
            events += self.delta(out.text[len(shown):])
        first = int(bool(out.reasoning)) + int(objects.has_message(out))  # items before the calls
        if objects.has_message(out):  # always when text was shown (the worker shows content only)
            message = final["output"][first - 1]
            events += [*self._open(),
                       self._event("response.output_text.done", **self._at(), text=out.text,
                                   logprobs=objects.logprobs(out.logprobs)),
                       self._event("response.content_part.done", **self._at(), part=message["content"][0]),
                       self._event("response.output_item.done", output_index=first - 1, item=message)]
        for index, item in enumerate(final["output"][first:], start=first):
            events += self._call(index, item)
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        self.final = final
        return [*events, self._event(kind, response=final)]

    def _call(self, index: int, item: dict[str, Any]) -> list[Event]:
        at = {"item_id": item["id"], "output_index": index}
        return [self._event("response.output_item.added", output_index=index,
                            item={**item, "status": "in_progress", "arguments": ""}),
                self._event("response.function_call_arguments.delta", **at, delta=item["arguments"]),
                self._event("response.function_call_arguments.done", **at, name=item["name"],
                            arguments=item["arguments"]),
                self._event("response.output_item.done", output_index=index, item=item)]

    def failed(self, error: JobError) -> list[Event]:
        self.final = objects.ended_with(self.stored, error)
        events = [] if self.final["status"] == "cancelled" else [
            self._event("error", code=error.code or error.type, message=error.message, param=error.param)]
        return [*events, self._event("response.failed", response=self.final)]


def translate(tr: ResponseEvents, event: JobEvent[GenerateResult]) -> list[Event]:
    match event:
        case TextDelta(_, text, entries):
            return tr.delta(text, entries)
        case ReasoningDelta(_, text):
            return tr.reasoning(text)
        case Finished(result):
            return tr.finished(result)
        case Failed(error):
            return tr.failed(error)
        case _:
            assert_never(event)


async def response_frames(events: AsyncIterable[JobEvent[GenerateResult]], tr: ResponseEvents, after: int = -1,
                          on_end: Callable[[dict[str, Any]], Awaitable[None]] | None = None) -> AsyncIterator[bytes]:
    """SSE frames of the events numbered above ``after``; ``on_end`` gets the final object before
    the last event goes out (to store it)."""
    def frames(batch: list[Event]) -> list[bytes]:
        return [frame(dumps(e).decode(), event=e["type"])
                for e in batch if e["sequence_number"] > after]

    for chunk in frames(tr.opening()):
        yield chunk
    async for event in events:
        batch = translate(tr, event)
        if tr.final is not None and on_end is not None:
            await on_end(tr.final)
        for chunk in frames(batch):
            yield chunk
