"""The real stack for the tests: a private redis-server, real worker processes, uvicorn.

Model folders live in a temporary ``LLM/``: tiny random models built here (one per family) and the
real default models linked from the project's ``LLM/`` (``make test`` puts them there first).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from tasks.supervisor.redis_server import RedisServer, free_port
from tests.tiny_models import build_tiny_model

ROOT = Path(__file__).resolve().parent.parent
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TINY_CHATML = "acme/tiny-chatml"
TINY_MISTRAL = "acme/tiny-mistral"
TINY_LLAMA3 = "acme/tiny-llama3"  # present but never served: the 503 case
TINY_GENERIC = "acme/tiny-generic"
TINY_BERT = "acme/tiny-bert"
# One per added family (ids that name it, as real ones do); started by the tests that use them.
TINY_QWEN25 = "acme/tiny-qwen2.5"
TINY_QWEN3 = "acme/tiny-qwen3"  # scripted: greedy writes a thought, then an answer (tests/tiny_specs.py)
TINY_GEMMA = "acme/tiny-gemma"
TINY_PHI3 = "acme/tiny-phi-3"
TINY_PHI4 = "acme/tiny-phi-4-mini"
TINY_DEEPSEEK = "acme/tiny-deepseek-r1"  # scripted, and its template opens <think> in the prompt
NEW_FAMILIES = {"qwen25": TINY_QWEN25, "qwen3": TINY_QWEN3, "gemma": TINY_GEMMA, "phi3": TINY_PHI3,
                "phi4": TINY_PHI4, "deepseek_r1": TINY_DEEPSEEK}
SERVED = (TINY_CHATML, TINY_MISTRAL, SMOL, MINILM)


@dataclass
class Stack:
    root: Path
    models_dir: Path
    redis_url: str
    env: dict[str, str]
    base_url: str = ""
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def start_api(self, name: str, **env: str) -> str:
        """Start (another) API process; returns its base URL."""
        port = free_port()
        log = open(self.root / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning"],
            cwd=ROOT, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        _wait(lambda: httpx.get(f"{url}/health", timeout=1).status_code == 200, 30, f"API {name}", self.root / f"{name}.log")
        return url

    def start_worker(self, model: str, **env: str) -> subprocess.Popen:
        name = f"worker-{model.replace('/', '--')}-{len(self.procs)}"
        log = open(self.root / f"{name}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "tasks.worker", "--model", model], cwd=ROOT,
                                env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def ready_workers(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        r = self.redis
        for key in r.scan_iter("llmhost:worker:*"):
            h = r.hgetall(key)
            if h.get(b"state") == b"ready":
                m = h[b"model"].decode()
                counts[m] = counts.get(m, 0) + 1
        return counts

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def _wait(check, timeout: float, what: str, log: Path | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} not ready after {timeout} s\n{tail}")


def _models_dir(root: Path) -> Path:
    models = root / "LLM"
    for family, model_id in (("chatml", TINY_CHATML), ("mistral", TINY_MISTRAL), ("llama3", TINY_LLAMA3),
                             ("generic", TINY_GENERIC), ("bert", TINY_BERT), *NEW_FAMILIES.items()):
        build_tiny_model(family, models / model_id)
    for model_id in (SMOL, MINILM):
        src = ROOT / "LLM" / model_id
        if not (src / "config.json").is_file():
            pytest.exit(f"{src} is missing: run `make test` (it creates the default models first)", returncode=2)
        (models / model_id).parent.mkdir(parents=True, exist_ok=True)
        (models / model_id).symlink_to(src, target_is_directory=True)
    return models


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """Model folders only (no processes) for in-process handler tests."""
    return _models_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def stack(tmp_path_factory, tiny_models: Path) -> Stack:
    root = tmp_path_factory.mktemp("stack")
    server = RedisServer(root / "redis").start()
    env = {
        **os.environ,
        "LLMHOST_REDIS_URL": server.url, "LLMHOST_MODELS_DIR": str(tiny_models),
        "LLMHOST_STATE_DIR": str(root / "state"), "LLMHOST_TORCH_THREADS": "1",
        # fp32 on every machine: `auto` is bf16 on CPUs with AMX/AVX512-BF16 and fp32 elsewhere, and
        # bf16 greedy output shifts with batch shape and prefix-cache hits. The suite asserts the
        # same thing everywhere; tests of bf16 itself ask for it.
        "LLMHOST_DTYPE": "float32",
        "LLMHOST_REQUEST_TIMEOUT": "120", "LLMHOST_HEARTBEAT_INTERVAL": "1", "LLMHOST_HEARTBEAT_TTL": "3",
        "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
    }
    s = Stack(root, tiny_models, server.url, env)
    try:
        for model in SERVED:
            s.start_worker(model)
        s.base_url = s.start_api("api")
        _wait(lambda: all(s.ready_workers().get(m) for m in SERVED), 180, "workers", None)
        yield s
    finally:
        s.stop()
        server.stop()
        if os.environ.get("LLMHOST_KEEP_TEST_LOGS"):
            shutil.copytree(root, ROOT / ".state" / "test-logs", dirs_exist_ok=True)


@pytest.fixture(scope="session")
def client(stack: Stack):
    from openai import OpenAI

    return OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def http(stack: Stack) -> httpx.Client:
    with httpx.Client(base_url=stack.base_url, timeout=120) as c:
        yield c
