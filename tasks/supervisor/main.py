"""``make run``: Redis (unless ``LLMHOST_REDIS_URL`` is set), one worker per default model, the API.

Restarts a child that dies (with back-off), prints where the API listens once it is ready, and on
Ctrl-C / SIGTERM stops everything it started. No torch here: workers are separate processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

from tasks.contract.settings import Settings, get_settings, load_api_keys
from tasks.supervisor.redis_server import RedisServer

MAX_BACKOFF = 30.0


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default=0.0)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env)
        self.started_at = time.monotonic()

    def check(self, now: float) -> None:
        """Restart a dead child, waiting longer each time it dies young."""
        if self.proc is None or self.proc.poll() is None:
            if self.proc is None and now >= self.next_start:
                self.start()
            return
        code = self.proc.returncode
        lived = now - self.started_at
        self.restarts = 0 if lived > 60 else self.restarts + 1
        delay = min(MAX_BACKOFF, 2.0 ** self.restarts) if self.restarts else 1.0
        print(f"[llmhost] {self.name} exited with {code}; restarting in {delay:.0f} s", file=sys.stderr, flush=True)
        self.proc = None
        self.next_start = now + delay

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)


def _ready(url: str, api_key: str | None = None) -> bool:
    try:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=1) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001 - not up yet
        return False


def _children(settings: Settings, env: dict[str, str]) -> list[Child]:
    """One worker per default model, the API, and Flower when asked for (``LLMHOST_FLOWER_PORT``)."""
    py = sys.executable
    children = [Child(f"worker {m}", [py, "-m", "tasks.worker", "--model", m], env) for m in settings.default_models]
    children.append(Child("api", [py, "-m", "uvicorn", "api.app:create_app", "--factory", "--host", settings.host,
                                  "--port", str(settings.port), "--log-level", "warning"], env))
    if settings.flower_port:
        if not env.get("FLOWER_BASIC_AUTH"):
            raise SystemExit("[llmhost] LLMHOST_FLOWER_PORT is set: set FLOWER_BASIC_AUTH=user:password too "
                             "(Flower shows every task; it is never served without a login)")
        # Flower reads FLOWER_BASIC_AUTH from the environment itself.
        children.append(Child("flower", [py, "-m", "celery", f"--broker={env['LLMHOST_REDIS_URL']}", "flower",
                                         f"--address={settings.host}", f"--port={settings.flower_port}"], env))
    return children


def main() -> int:
    settings = get_settings()
    api_key = next(iter(load_api_keys(settings)), None)  # /ready is behind the key when keys are set
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    redis_server = None
    if not os.environ.get("LLMHOST_REDIS_URL"):
        redis_server = RedisServer(settings.state_dir / "redis").start()
        env["LLMHOST_REDIS_URL"] = redis_server.url
        print(f"[llmhost] started redis-server at {redis_server.url} (data in {redis_server.data_dir})", flush=True)

    children = _children(settings, env)
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    started = time.monotonic()
    base = f"http://{settings.host}:{settings.port}"
    announced = False
    try:
        while not stopping:
            now = time.monotonic()
            if redis_server and not redis_server.alive():
                # Same port, same data dir: it reloads its append-only file and everyone reconnects.
                print(f"[llmhost] redis-server exited with {redis_server.proc.returncode if redis_server.proc else '?'}; "
                      "restarting it", file=sys.stderr, flush=True)
                try:
                    redis_server.start()
                except RuntimeError as e:
                    print(f"[llmhost] {e}; retrying", file=sys.stderr, flush=True)
            for child in children:
                child.check(now)
            if not announced and _ready(f"{base}/ready", api_key):
                announced = True
                flower = f", Flower at http://{settings.host}:{settings.flower_port}" if settings.flower_port else ""
                print(f"[llmhost] ready in {now - started:.1f} s: OpenAI API at {base}/v1, web page at {base}/{flower} "
                      f"(models: {', '.join(settings.default_models)}); Ctrl-C stops", flush=True)
            time.sleep(0.5)
    finally:
        print("[llmhost] stopping…", flush=True)
        for child in children:
            child.stop()
        deadline = time.monotonic() + 15
        for child in children:
            if child.proc is not None:
                try:
                    child.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.proc.kill()
        if redis_server:
            redis_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
