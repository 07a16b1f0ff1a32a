"""Typed configuration, read once from the environment (prefix ``LLMHOST_``) and passed explicitly.

Both sides use it: the front for routing and timeouts, the worker for loading. Nothing here reads the
environment at import time; call :func:`get_settings` (or build ``Settings(...)`` in tests).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # tasks/contract/settings.py → the checkout


class Settings(BaseSettings):
    # hide_input_in_errors: a bad value is named, never echoed (it may be an API key).
    model_config = SettingsConfigDict(env_prefix="LLMHOST_", env_file=None, extra="ignore", hide_input_in_errors=True)

    # Where things are.
    redis_url: str = "redis://127.0.0.1:6379/0"
    models_dir: Path = PROJECT_ROOT / "LLM"
    state_dir: Path = PROJECT_ROOT / ".state"
    host: str = "127.0.0.1"
    port: int = Field(41443, ge=1, le=65535)
    # `make run` also starts Flower (Celery's own monitor) here when set; needs FLOWER_BASIC_AUTH.
    flower_port: Optional[int] = Field(None, ge=1, le=65535)

    # What `make run` serves.
    default_models: list[str] = [
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "sentence-transformers/all-MiniLM-L6-v2",
    ]

    # What /ready waits for (every one needs a ready worker); unset = default_models.
    ready_models: Optional[list[str]] = None

    # Front behaviour.
    request_timeout: float = Field(300.0, gt=0, description="seconds a sync request or stream may wait")
    job_ttl: int = Field(3600, gt=0, description="seconds a finished job's record is kept")
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    # Stored responses (/v1/responses with store, the default): kept this long, at most this many
    # (the oldest go first). A background response's job record and kept events live as long.
    response_ttl: int = Field(86400, gt=0, description="seconds a stored response is kept")
    max_stored_responses: int = Field(10000, ge=1, description="stored responses kept at most; the oldest go first")

    # Worker behaviour.
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    quantization: Literal["none", "8bit", "4bit"] = "none"
    torch_threads: int = Field(0, ge=0, description="0 = torch's default (all cores)")
    cpu_kernels: bool = Field(True, description="bf16 and fp32 on CPU: oneDNN-prepacked, fused linear layers")
    heartbeat_interval: float = Field(2.0, gt=0)
    heartbeat_ttl: int = Field(10, gt=0)
    max_batch: int = Field(32, ge=1, description="sequences decoded together; 1 = one request at a time")
    max_batch_tokens: int = Field(32768, ge=16, description="prompt+generated tokens held in the KV cache before new sequences wait")
    max_prefill_tokens: int = Field(2048, ge=16, description="prompt tokens prefilled in one step (more wait for the next)")
    prefix_cache_tokens: int = Field(4096, ge=0, description="tokens of prompt-prefix KV kept for reuse; 0 = off")
    reserved_slots: Optional[int] = Field(None, ge=0, description="batch rows bulk work leaves to interactive work "
                                          "(and interactive to bulk while bulk waits); unset = max_batch // 8; 0 = no split")
    max_attempts: int = Field(3, ge=1, description="starts of a job whose worker dies each time before it fails")

    log_level: str = "INFO"

    # --- operations and security ---
    # API keys: a JSON list or a comma-separated list (LLMHOST_API_KEYS), and/or a file with one key
    # per line (`#` starts a comment line). Any key configured → every route but GET /health needs
    # `Authorization: Bearer <key>`. Kept out of repr so that logging the settings never shows them.
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, repr=False)
    api_keys_file: Optional[Path] = None
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="CORS off when empty")
    log_format: Literal["json", "text"] = "json"
    max_queue_depth: int = Field(256, ge=0, description="jobs waiting in one model's queue before 429; 0 = unlimited")

    # --- files and batches (/v1/files, /v1/batches) ---
    max_file_bytes: int = Field(200 * 1024 * 1024, gt=0, description="largest upload to /v1/files (413 above)")
    batch_max_lines: int = Field(50_000, ge=1, description="lines one batch input file may hold")
    batch_window_seconds: int = Field(86_400, ge=1, description="what completion_window `24h` gives a batch "
                                      "before it expires")
    batch_lines_per_worker: int = Field(64, ge=1, description="lines of one batch in flight per ready worker of "
                                        "their model (about 2 x max_batch keeps the worker's batch full)")
    batch_runner: bool = Field(True, description="this API process also drives batches (each by one process, "
                                                 "under a lease)")
    batch_lease_seconds: float = Field(10.0, ge=1.0, description="how soon another API process takes over the "
                                       "batches of one that died")

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _string_list(cls, v: Any) -> Any:
        """A JSON list (``["a","b"]``) or a comma-separated string (``a, b``); blanks dropped."""
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                try:
                    v = json.loads(text)
                except json.JSONDecodeError as e:
                    raise ValueError(f"not a valid JSON list ({e.msg}); use a JSON list or comma-separated values") from None
            else:
                v = text.split(",")
        if isinstance(v, (list, tuple)):
            return [s.strip() if isinstance(s, str) else s for s in v if not (isinstance(s, str) and not s.strip())]
        return v

    @field_validator("models_dir", "state_dir", "api_keys_file")
    @classmethod
    def _absolute(cls, v: Optional[Path]) -> Optional[Path]:
        if v is None:
            return None
        return v if v.is_absolute() else (PROJECT_ROOT / v)

    @field_validator("reserved_slots")
    @classmethod
    def _reserve_fits(cls, v: Optional[int], info: Any) -> Optional[int]:
        batch = info.data.get("max_batch", 32)
        if v and v >= batch:
            raise ValueError(f"reserved_slots ({v}) must be smaller than max_batch ({batch}); 0 turns priorities off")
        return v

    @property
    def slots_reserved(self) -> int:
        return self.max_batch // 8 if self.reserved_slots is None else self.reserved_slots

    @property
    def models_to_ready(self) -> list[str]:
        return self.default_models if self.ready_models is None else self.ready_models

    @field_validator("heartbeat_ttl")
    @classmethod
    def _ttl_covers_interval(cls, v: int, info) -> int:
        interval = info.data.get("heartbeat_interval", 2.0)
        if v < 2 * interval:
            raise ValueError(f"heartbeat_ttl ({v}s) must be at least twice heartbeat_interval ({interval}s)")
        return v


def read_keys_file(path: Path) -> list[str]:
    """One key per line; blank lines and lines starting with ``#`` are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise RuntimeError(f"LLMHOST_API_KEYS_FILE: cannot read {path}: {e.strerror or e}") from None
    return [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]


def load_api_keys(settings: Settings) -> list[str]:
    """Every configured API key: ``api_keys`` then the lines of ``api_keys_file`` (read now)."""
    keys = list(settings.api_keys)
    if settings.api_keys_file is not None:
        keys += read_keys_file(settings.api_keys_file)
    return list(dict.fromkeys(keys))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
