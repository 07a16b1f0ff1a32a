"""The check of a batch's input file before any line runs (the batch's ``validating`` status).

Each line must be a JSON object with a unique non-empty ``custom_id``, the batch's endpoint as
``url``, ``method`` POST when given, and an object ``body``. What the body holds is not looked at
here: each line's body is checked when it is submitted, exactly as its endpoint checks a direct
request, so a bad body is that line's error (in the error file), not the batch's failure. Blank
lines are skipped; line numbers are the file's, from 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

MAX_REPORTED = 100  # errors listed per batch: enough to fix a file, bounded for the batch object


@dataclass(frozen=True)
class LineError:
    code: str
    message: str
    line: Optional[int] = None
    param: Optional[str] = None

    def view(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclass(frozen=True)
class ValidLine:
    index: int  # among the valid lines, from 0
    group: str  # the body's model, which decides the queue ("" when it names none: that line fails)
    text: str


class InputCheck:
    """Feed the file's lines in order; ``errors`` says what is wrong, ``groups`` which lines go to
    which model."""

    def __init__(self, endpoint: str, max_lines: int) -> None:
        self.endpoint = endpoint
        self.max_lines = max_lines
        self.errors: list[LineError] = []
        self.count = 0
        self.groups: dict[str, list[int]] = {}
        self._ids: dict[str, int] = {}  # custom_id → its line number
        self._over = False

    @property
    def full(self) -> bool:
        """Enough reported: reading on would tell nothing new."""
        return self._over or len(self.errors) >= MAX_REPORTED

    def feed(self, number: int, raw: bytes) -> Optional[ValidLine]:
        if not raw.strip():
            return None
        if self.count >= self.max_lines:
            self._error("too_many_lines", f"The file has more than {self.max_lines} lines (LLMHOST_BATCH_MAX_LINES); "
                        "split it into several batches.", number)
            self._over = True
            return None
        obj = self._parse(number, raw)
        if obj is None or not self._fields_ok(number, obj):
            return None
        self.count += 1
        model = obj["body"].get("model")
        group = model if isinstance(model, str) else ""
        self.groups.setdefault(group, []).append(self.count - 1)
        return ValidLine(self.count - 1, group, raw.decode())

    def finish(self) -> None:
        if not self.count and not self.errors:
            self._error("empty_file", "The input file holds no request lines.")

    def _parse(self, number: int, raw: bytes) -> Optional[dict[str, Any]]:
        try:
            obj = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            self._error("invalid_json_line", f"Line {number} is not valid JSON.", number)
            return None
        if not isinstance(obj, dict):
            self._error("invalid_json_line", f"Line {number} is not a JSON object.", number)
            return None
        return obj

    def _fields_ok(self, number: int, obj: dict[str, Any]) -> bool:
        custom_id, url, method = obj.get("custom_id"), obj.get("url"), obj.get("method", "POST")
        if not isinstance(custom_id, str) or not custom_id:
            return self._error("missing_required_parameter", f"Line {number} has no `custom_id` (a non-empty string).",
                               number, "custom_id")
        if custom_id in self._ids:
            return self._error("duplicate_custom_id", f"Line {number} repeats the custom_id `{custom_id}` of line "
                               f"{self._ids[custom_id]}; each line needs its own.", number, "custom_id")
        self._ids[custom_id] = number
        if url != self.endpoint:
            shown = f"`{url}`" if isinstance(url, str) else "missing"
            return self._error("mismatched_url", f"Line {number}: its url ({shown}) must be the batch's endpoint "
                               f"`{self.endpoint}`.", number, "url")
        if method != "POST":
            return self._error("invalid_method", f"Line {number}: method must be `POST`.", number, "method")
        if not isinstance(obj.get("body"), dict):
            return self._error("missing_required_parameter", f"Line {number} has no `body` object.", number, "body")
        return True

    def _error(self, code: str, message: str, line: Optional[int] = None, param: Optional[str] = None) -> bool:
        if not self.full:
            self.errors.append(LineError(code, message, line, param))
        return False


def errors_view(errors: list[LineError]) -> dict[str, Any]:
    """The batch object's ``errors``."""
    return {"object": "list", "data": [e.view() for e in errors]}
