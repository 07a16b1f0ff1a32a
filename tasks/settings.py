"""Typed configuration, read once from the environment (prefix ``LLMHOST_``) and passed explicitly.

Both sides use it: the front for routing and timeouts, the worker for loading. Nothing here reads the
environment at import time; call :func:`get_settings` (or build ``Settings(...)`` in tests).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMHOST_", env_file=None, extra="ignore")

    # Where things are.
    redis_url: str = "redis://127.0.0.1:6379/0"
    models_dir: Path = PROJECT_ROOT / "LLM"
    state_dir: Path = PROJECT_ROOT / ".state"
    host: str = "127.0.0.1"
    port: int = Field(41443, ge=1, le=65535)

    # What `make run` serves.
    default_models: list[str] = [
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "sentence-transformers/all-MiniLM-L6-v2",
    ]

    # Front behaviour.
    request_timeout: float = Field(300.0, gt=0, description="seconds a sync request or stream may wait")
    job_ttl: int = Field(3600, gt=0, description="seconds a finished job's record is kept")
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)

    # Worker behaviour.
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    quantization: Literal["none", "8bit", "4bit"] = "none"
    torch_threads: int = Field(0, ge=0, description="0 = torch's default (all cores)")
    heartbeat_interval: float = Field(2.0, gt=0)
    heartbeat_ttl: int = Field(10, gt=0)
    max_batch: int = Field(32, ge=1, description="sequences decoded together; 1 = one request at a time")
    max_batch_tokens: int = Field(32768, ge=16, description="prompt+generated tokens held in the KV cache before new sequences wait")
    max_prefill_tokens: int = Field(512, ge=16, description="prompt tokens prefilled in one step (more wait for the next)")
    prefix_cache_tokens: int = Field(4096, ge=0, description="tokens of prompt-prefix KV kept for reuse; 0 = off")

    log_level: str = "INFO"

    @field_validator("models_dir", "state_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v if v.is_absolute() else (PROJECT_ROOT / v)

    @field_validator("heartbeat_ttl")
    @classmethod
    def _ttl_covers_interval(cls, v: int, info) -> int:
        interval = info.data.get("heartbeat_interval", 2.0)
        if v < 2 * interval:
            raise ValueError(f"heartbeat_ttl ({v}s) must be at least twice heartbeat_interval ({interval}s)")
        return v


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
