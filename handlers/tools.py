"""Tool calling, the parts every family shares: call ids, JSON helpers, the schema of a forced call,
the per-request plan the worker follows, and the stream filter that keeps call markup out of content.

What differs per family (the prompt format of tools, calls and results, the call markers, the
parser) lives in the family's handler (``chatml.py``, ``llama3.py``, ``mistral.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import string
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from tasks.contract.payloads import Message, ToolCall

from .text import partial_prefix_tail

log = logging.getLogger(__name__)

Parse = Callable[[str], "tuple[str | None, list[ToolCall]]"]

_ALNUM = string.ascii_letters + string.digits
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


# --- ids -------------------------------------------------------------------------------------------

def openai_call_id() -> str:
    """``call_`` and 24 hex digits, as OpenAI's ids look."""
    return "call_" + secrets.token_hex(12)


def alnum9_call_id() -> str:
    """Mistral's call ids: 9 alphanumeric characters."""
    return "".join(secrets.choice(_ALNUM) for _ in range(9))


def as_alnum9(call_id: str) -> str:
    """A client's id in Mistral's 9-alphanumeric form: kept when it already is one, else a stable
    digest (so a call and its result still match)."""
    if len(call_id) == 9 and call_id.isascii() and call_id.isalnum():
        return call_id
    return hashlib.sha256(call_id.encode()).hexdigest()[:9]


# --- JSON ------------------------------------------------------------------------------------------

def arguments_object(arguments: str) -> Any:
    """A call's JSON-string arguments as a value (templates want a dict); the string if not JSON."""
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def dumps(value: Any, **kw: Any) -> str:
    """``tojson`` as Hugging Face chat templates write it."""
    return json.dumps(value, ensure_ascii=False, **kw)


def make_call(obj: Any, args_keys: Sequence[str], new_id: Callable[[], str]) -> ToolCall | None:
    """``{"name": str, <args key>: object}`` → a :class:`ToolCall`, or None if it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = next((obj[k] for k in args_keys if k in obj), None)
    if isinstance(args, str):  # some models send the arguments as a JSON string
        args = arguments_object(args)
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return None
    return ToolCall(id=new_id(), name=obj["name"], arguments=dumps(args))


def decode_json(text: str, start: int = 0) -> tuple[Any, int] | None:
    """The JSON value at ``text[start:]`` (after whitespace) and where it ends, or None."""
    while start < len(text) and text[start].isspace():
        start += 1
    try:  # not strict: a control character inside a string (small models make them) is still that string
        return json.JSONDecoder(strict=False).raw_decode(text, start)
    except ValueError:
        return None


def content_before(text: str, index: int) -> str | None:
    """The text before a call, without the whitespace that separated them; None when empty."""
    return text[:index].rstrip() or None


# --- HF chat-template shapes -------------------------------------------------------------------------

def hf_tools(tools: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "function", "function": t} for t in tools]


def hf_message(m: Message) -> dict[str, Any]:
    """A message as Hugging Face templates expect it (fields only when set: templates test
    ``'tool_calls' in message``)."""
    d: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        d["tool_calls"] = [{"id": c.id, "type": "function",
                            "function": {"name": c.name, "arguments": arguments_object(c.arguments)}}
                           for c in m.tool_calls]
    if m.tool_call_id is not None:
        d["tool_call_id"] = m.tool_call_id
    return d


def uses_tools(messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None) -> bool:
    return bool(tools) or any(m.role == "tool" or m.tool_calls for m in messages)


# --- forced calls -------------------------------------------------------------------------------------

def call_schema(tool: dict[str, Any], args_key: str = "arguments") -> dict[str, Any]:
    return {"type": "object",
            "properties": {"name": {"const": tool["name"]}, args_key: tool.get("parameters") or EMPTY_PARAMETERS},
            "required": ["name", args_key]}


def forced_schema(tools: Sequence[dict[str, Any]], choice: str | dict[str, Any], args_key: str = "arguments") -> dict[str, Any]:
    """One call: to the named function, or (``required``) to any of the tools, with that tool's
    parameters."""
    if isinstance(choice, dict):
        chosen = [t for t in tools if t["name"] == choice.get("name")]
    else:
        chosen = list(tools)
    alternatives = [call_schema(t, args_key) for t in chosen]
    return alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}


def forced(choice: str | dict[str, Any]) -> bool:
    return isinstance(choice, dict) or choice == "required"


# --- the worker's plan ----------------------------------------------------------------------------------

@dataclass
class ToolPlan:
    """How one request uses tools: what is rendered, the prefill and grammar of a forced call, how
    the output is parsed. Made by ``ChatHandler.tool_plan``; None when tools are off."""

    tools: list[dict[str, Any]]
    parse: Parse
    prefill: str = ""
    constraint: dict[str, Any] | None = None
    parallel: bool = True
    markers: tuple[str, ...] = ()
    start_markers: tuple[str, ...] = ()

    def filter(self) -> "ToolCallFilter":
        return ToolCallFilter(self.parse, self.markers, self.start_markers, self.prefill)

    def finish(self, text: str) -> tuple[str, list[ToolCall]]:
        """(content, calls) of a generated ``text``; content is ``text`` itself when there is no call."""
        content, calls = self.parse(self.prefill + text)
        if not calls:
            return text, []
        return content or "", calls if self.parallel else calls[:1]


@dataclass
class ToolCallFilter:
    """Stream filter, ``(delta, final) -> text to show``: passes content until a tool-call marker may
    have started (holding back a tail that could become one, and the whitespace before it), then
    shows nothing more. At the end the text is parsed: with calls, the content before them is what
    was shown; without, everything held back is released. So the streamed content always equals the
    non-streamed ``message.content``."""

    parse: Parse
    markers: tuple[str, ...]
    start_markers: tuple[str, ...] = ()
    prefill: str = ""
    text: str = ""
    emitted: int = 0
    holding: bool = False
    done: bool = False
    _longest: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        self.text = self.prefill
        self.emitted = len(self.prefill)
        self._longest = max((len(m) for m in self.markers), default=0)
        if self.prefill:
            self.holding = True  # a forced call: everything generated is the call

    def __call__(self, delta: str, final: bool) -> str:
        try:
            return self._feed(delta, final)
        except Exception:  # noqa: BLE001 - never take the engine thread down
            log.exception("tool-call stream filter failed; passing the text through")
            self.holding, self.done = True, True
            return delta

    def _feed(self, delta: str, final: bool) -> str:
        if self.done:
            return ""
        self.text += delta
        if final:
            self.done = True
            content, calls = self.parse(self.text)
            target = (content or "") if calls else self.text
            return self._release(len(target)) if target.startswith(self.text[:self.emitted]) else ""
        if self.holding:
            return ""
        at = self._marker_at()
        if at is not None:
            self.holding = True
            return self._release(self._before_space(at))
        return self._release(self._before_space(len(self.text) - self._partial_tail()))

    def _marker_at(self) -> int | None:
        if self.start_markers and not self.text[:self.emitted].strip():
            body = self.text.lstrip()
            lead = len(self.text) - len(body)
            if any(body.startswith(m) for m in self.start_markers):
                return lead
        hits = [i for i in (self.text.find(m) for m in self.markers) if i >= 0]
        return min(hits) if hits else None

    def _partial_tail(self) -> int:
        """Length of the longest tail that could still become a marker."""
        if self.start_markers and not self.text[:self.emitted].strip():
            body = self.text.lstrip()
            if not body or any(m.startswith(body) for m in self.start_markers):
                return len(self.text) - self.emitted
        return partial_prefix_tail(self.text, self.markers, self._longest)

    def _before_space(self, upto: int) -> int:
        while upto > self.emitted and self.text[upto - 1].isspace():
            upto -= 1
        return upto

    def _release(self, upto: int) -> str:
        upto = max(upto, self.emitted)
        out = self.text[self.emitted:upto]
        self.emitted = upto
        return out


# --- the Hermes format (Qwen 2.5+, Hermes, most tool-aware chat templates) ----------------------------

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"


def parse_hermes(text: str, new_id: Callable[[], str]) -> tuple[str | None, list[ToolCall]]:
    """``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` blocks (the last one may be
    unclosed: a forced call ends right after its JSON); the text before the first is the content.
    Any block that is not a valid call → no calls, the whole text is content."""
    first = text.find(HERMES_OPEN)
    if first < 0:
        return text, []
    calls, at = [], first
    while at >= 0:
        got = decode_json(text, at + len(HERMES_OPEN))
        call = make_call(got[0], ("arguments", "parameters"), new_id) if got else None
        if got is None or call is None:
            return text, []
        calls.append(call)
        at = text.find(HERMES_OPEN, got[1])
    return content_before(text, first), calls


def hermes_call(call: ToolCall) -> str:
    """A call as Qwen 2.5's template writes it back."""
    return ('<tool_call>\n{"name": "' + call.name + '", "arguments": ' + dumps(arguments_object(call.arguments))
            + "}\n</tool_call>")
