"""A batch's record, typed (from its Redis hash), and the OpenAI batch object it is shown as."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

TIMESTAMPS = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
              "cancelled_at")


def _int(v: Optional[str]) -> Optional[int]:
    return int(float(v)) if v not in (None, "") else None


@dataclass(frozen=True)
class BatchRecord:
    raw: dict[str, str]

    @property
    def id(self) -> str:
        return self.raw["id"]

    @property
    def status(self) -> str:
        return self.raw["status"]

    @property
    def endpoint(self) -> str:
        return self.raw["endpoint"]

    @property
    def expires_at(self) -> float:
        return float(self.raw["expires_at"])

    @property
    def max_lines(self) -> int:
        return int(self.raw.get("max_lines") or 0)

    @property
    def total(self) -> int:
        return int(self.raw.get("total") or 0)

    @property
    def done(self) -> int:
        return int(self.raw.get("completed") or 0) + int(self.raw.get("failed") or 0)

    @property
    def models(self) -> list[str]:
        return json.loads(self.raw.get("models") or "[]")

    @property
    def sizes(self) -> list[int]:
        return json.loads(self.raw.get("sizes") or "[]")

    @property
    def groups(self) -> int:
        return int(self.raw.get("groups") or 0)

    def cursor(self, group: int) -> int:
        return int(self.raw.get(f"cursor:{group}") or 0)

    def view(self) -> dict[str, Any]:
        """The OpenAI batch object."""
        r = self.raw
        models = self.models
        return {
            "id": self.id, "object": "batch", "endpoint": self.endpoint,
            "errors": json.loads(r["errors"]) if r.get("errors") else None,
            "input_file_id": r["input_file_id"], "completion_window": r["completion_window"], "status": self.status,
            "output_file_id": r.get("output_file_id") or None, "error_file_id": r.get("error_file_id") or None,
            "created_at": _int(r["created_at"]), "expires_at": _int(r["expires_at"]),
            **{k: _int(r.get(k)) for k in TIMESTAMPS},
            "request_counts": {"total": self.total, "completed": int(r.get("completed") or 0),
                               "failed": int(r.get("failed") or 0)},
            "metadata": json.loads(r["metadata"]) if r.get("metadata") else None,
            "model": models[0] if len(models) == 1 else None,
        }
