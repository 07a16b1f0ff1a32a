"""Throughput and latency of LLM-Host under concurrent streaming load, batched vs one-at-a-time.

    python -m bench.load                      # start servers itself, batched and unbatched, print + plot
    python -m bench.load --url http://127.0.0.1:41443 --no-unbatched   # drive a running server

For each concurrency level, N clients each send streaming chat requests (greedy, ``max_tokens``
output tokens) over the real HTTP API and the table reports requests/s, output tokens/s, time to
first token and inter-token latency (p50/p99), errors. It also measures what the queue adds: a
``max_tokens: 1`` request through the API against the same generation called in-process, and the
per-token streaming cost; and the worker's peak RSS. It writes a PNG plot of throughput and TTFT
against concurrency. Numbers, not asserts.

The queue overhead takes the requests through the API and those on the in-process engine in turns,
a short block of each (the first two of a block not counted: the other side's weights were just in
the caches, and its OpenMP threads still spinning): these machines drift by 10-20 % within minutes,
more than the overhead itself, and a baseline measured minutes apart from the API's requests
measured the drift. Taken one by one instead, each request found its weights out of the cache.
The API's requests come from a plain HTTP/1.1 client (``http.client``): the overhead is what the
server adds, not what the client spends; the same requests from httpx are timed in blocks of their
own and printed beside (each client's block follows an in-process one, their order swapped every
cycle).

Where the script started the server, it also prints the time *outside the engine*: each of the
plain client's requests less its own job's time in the engine, which the worker writes on the job's
closing log line (``engine_seconds``: from the engine thread taking the sequence to the end of the
step that finished it). The engine's step varies by 10-20 ms from one request to the next on these
machines and the two p50s above inherit that; this difference does not, so it shows what the front,
Redis, Celery and the worker's threads add even on a busy or drifting machine. It includes the
worker's prompt preparation (template, tokenizing; the in-process request pays that too, ~0.3 ms warm).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx

from tasks.supervisor.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
TOPICS = ["a dragon", "the sea", "a lost city", "a robot", "two brothers", "a storm", "the moon", "a library",
          "a long journey", "a clockmaker", "a forest", "a small village", "a pirate ship", "a winter night",
          "an old map", "a mountain"]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


@dataclass
class LevelResult:
    concurrency: int
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    wall: float = 0.0
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)

    @property
    def tok_s(self) -> float:
        return self.tokens / self.wall if self.wall else 0.0

    @property
    def req_s(self) -> float:
        return self.requests / self.wall if self.wall else 0.0


async def one_stream(client: httpx.AsyncClient, prompt: str, max_tokens: int, res: LevelResult,
                     extra: dict | None = None) -> None:
    """``extra``: more fields for the request body (e.g. ``{"ignore_eos": True}``)."""
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
            "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}, **(extra or {})}
    start = time.perf_counter()
    last = None
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                res.errors += 1
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    res.errors += 1
                    return
                if chunk.get("usage"):
                    res.tokens += chunk["usage"]["completion_tokens"]
                if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                    now = time.perf_counter()
                    if last is None:
                        res.ttft.append((now - start) * 1000)
                    else:
                        res.itl.append((now - last) * 1000)
                    last = now
        res.requests += 1
    except httpx.HTTPError:
        res.errors += 1


async def run_level(url: str, concurrency: int, per_client: int, max_tokens: int,
                    extra: dict | None = None) -> LevelResult:
    res = LevelResult(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def worker(i: int) -> None:
            for j in range(per_client):
                topic = TOPICS[(i + j) % len(TOPICS)]
                await one_stream(client, f"Write a long story about {topic}.", max_tokens, res, extra)
        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        res.wall = time.perf_counter() - start
    return res


BLOCK = 10  # requests of one side in a row, of which the first WARM are not counted
WARM = 2


class InProcess:
    """The same generations without HTTP, Redis or Celery: the baseline the queue is charged against.
    The same engine the worker runs, kept across requests (its prefix cache warm, as the worker's is)."""

    def __init__(self, models_dir: Path, dtype: str, threads: int) -> None:
        from handlers.engine import Engine
        from handlers.registry import detect_family, handler_class
        from tasks.contract.payloads import LoadOptions, Message, SamplingParams

        folder = models_dir / MODEL_ID
        self.handler = h = handler_class(detect_family(MODEL_ID, folder))(
            MODEL_ID, folder, LoadOptions(dtype=dtype, torch_threads=threads))
        h.load()
        self.dtype = str(h.dtype)
        self.greedy = SamplingParams(temperature=0)
        self.message = Message
        self.engine = Engine(h)
        self.count = 0

    def one_token(self) -> float:
        """One ``max_tokens: 1`` chat request, templating included, in ms."""
        self.count += 1
        start = time.perf_counter()
        ids = self.handler.encode_chat([self.message(role="user", content="Hi")])
        self.engine.add(f"one{self.count}", ids, self.greedy, 1)
        while self.engine.has_work():
            self.engine.step()
        return (time.perf_counter() - start) * 1000

    def per_token_p50(self) -> float:
        """Decode time per token of one stream, in ms."""
        ids = self.handler.encode_chat([self.message(role="user", content="Write a long story about a dragon.")])
        self.engine.add("long", ids, self.greedy, 64)
        stamps = []
        while self.engine.has_work():
            if any(out.delta for out in self.engine.step()):
                stamps.append(time.perf_counter())
        return pct([(b - a) * 1000 for a, b in zip(stamps, stamps[1:])], 50)


def paired_one_token(url: str, samples: int, base: InProcess) -> tuple[list[float], list[float], list[float], list[str]]:
    """About ``samples`` ``max_tokens: 1`` requests each through the API (twice: from a plain
    HTTP/1.1 client, and from httpx) and in process, in alternating blocks. Returns (API ms, API ms
    from httpx, in-process ms, the plain client's response ids, one per API ms).

    The queue overhead is taken from the plain client (the standard library's ``http.client``, one
    kept-alive connection): what the server adds, not what the client spends building and parsing
    requests. httpx, the OpenAI SDK's client, costs 0.6 ms more than it for a ``/health`` request
    on a 2-core Xeon, and its Python runs with cold caches after each generation step, like the
    server's; its figure is printed beside."""
    api: list[float] = []
    ids: list[str] = []  # the job of each of `api`'s requests (a chat completion's id is its job's)
    api_httpx: list[float] = []
    local: list[float] = []
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}
    raw = json.dumps(body)
    parts = httpx.URL(url)
    https = parts.scheme == "https"
    path = parts.raw_path.decode().rstrip("/") + "/v1/chat/completions"
    plain = (http.client.HTTPSConnection if https else http.client.HTTPConnection)(
        parts.host, parts.port or (443 if https else 80), timeout=60)

    def through_api() -> float:
        start = time.perf_counter()
        plain.request("POST", path, raw, {"content-type": "application/json"})
        answer = plain.getresponse()
        data = answer.read()
        took = (time.perf_counter() - start) * 1000
        if answer.status != 200:
            raise SystemExit(f"the API answered {answer.status} to a max_tokens=1 request")
        ids.append(json.loads(data)["id"])
        return took

    def through_httpx() -> float:
        start = time.perf_counter()
        client.post("/v1/chat/completions", json=body).raise_for_status()
        return (time.perf_counter() - start) * 1000

    def block(side: Callable[[], float], out: list[float]) -> None:
        if side is through_api:
            plain.close()  # idle past the server's keep-alive meanwhile: a fresh connection, in a request not counted
        first = len(ids)
        out += [side() for _ in range(BLOCK)][WARM:]
        del ids[first:first + WARM]  # the uncounted requests' ids (none from the other sides)

    sides = [(through_api, api), (base.one_token, local), (through_httpx, api_httpx), (base.one_token, local)]
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            cycle = 0
            while len(api) < samples:
                # Each client's block follows the in-process one, its start rotated: neither always
                # comes after the other's warm server.
                for side, out in sides[2 * (cycle % 2):] + sides[:2 * (cycle % 2)]:
                    block(side, out)
                cycle += 1
    finally:
        plain.close()
    return api, api_httpx, local, ids


def outside_engine(log: Path, api: list[float], ids: list[str]) -> list[float]:
    """Each API request's time less its job's time in the engine (``engine_seconds`` on the worker's
    "job … ended" line in the server's log): what the front, Redis, Celery and the worker's threads
    add around the model, free of the step's own noise (a step on these machines varies by 10-20 ms
    between requests, more than the overhead)."""
    engine: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        if '"engine_seconds"' not in line:
            continue
        try:
            rec = json.loads(line[line.index("{"):])
        except ValueError:
            continue
        if rec.get("job_id") and isinstance(rec.get("engine_seconds"), (int, float)):
            engine[rec["job_id"]] = rec["engine_seconds"] * 1000
    return [ms - engine[i] for ms, i in zip(api, ids) if i in engine]


def rss_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def worker_pids(url: str) -> list[int]:
    status = httpx.get(f"{url}/old/status", timeout=5).json()
    return [int(w["pid"]) for w in status["workers"] if w["model"] == MODEL_ID]


def poll_ok(url: str, deadline: float, interval: float, check: Callable[[], None] | None = None) -> bool:
    """GET ``url`` until it answers 200 (True) or ``deadline`` (monotonic) passes (False); ``check``
    runs before each try (it may raise, e.g. when the server's process died)."""
    while time.monotonic() < deadline:
        if check is not None:
            check()
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    return False


class Server:
    """`python -m tasks.supervisor` serving one model on a free port, with its own Redis."""

    def __init__(self, max_batch: int, threads: int, dtype: str, log: Path, **extra_env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k != "LLMHOST_REDIS_URL"}
        env.update(LLMHOST_PORT=str(self.port), LLMHOST_DEFAULT_MODELS=json.dumps([MODEL_ID]),
                   LLMHOST_MAX_BATCH=str(max_batch), LLMHOST_TORCH_THREADS=str(threads), LLMHOST_DTYPE=dtype,
                   LLMHOST_STATE_DIR=str(ROOT / ".state" / f"bench-{self.port}"), HF_HUB_OFFLINE="1", **extra_env)
        self.proc = subprocess.Popen([sys.executable, "-m", "tasks.supervisor"], cwd=ROOT, env=env,
                                     stdout=log.open("wb"), stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180) -> None:
        if not poll_ok(f"{self.url}/ready", time.monotonic() + timeout, 0.5):
            raise SystemExit(f"server on {self.url} not ready after {timeout} s")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def reset_peak_rss(pid: int) -> None:
    """Start VmHWM afresh, so the peak is what serving adds, not the load-time transient."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def measure(url: str, label: str, levels: list[int], rounds: int, max_tokens: int, samples: int,
            base: InProcess) -> dict:
    pids = worker_pids(url)
    asyncio.run(run_level(url, 2, 1, 8))  # warm-up
    rss_start = {p: rss_kib(p, "VmRSS") for p in pids}
    for p in pids:
        reset_peak_rss(p)
    results = []
    for c in levels:
        res = asyncio.run(run_level(url, c, rounds, max_tokens))
        results.append(res)
        print(f"  [{label}] concurrency {c:>3}: {res.tok_s:7.1f} tok/s, TTFT p50 {pct(res.ttft, 50):7.0f} ms, "
              f"errors {res.errors}", flush=True)
    one, one_httpx, local, ids = paired_one_token(url, samples, base)
    peak = {p: rss_kib(p, "VmHWM") for p in pids}
    return {"label": label, "results": results, "api_one": one, "api_one_httpx": one_httpx, "local_one": local,
            "api_one_ids": ids,
            "rss_start_mib": sum(rss_start.values()) / 1024,
            "rss_peak_mib": sum(peak.values()) / 1024}


def print_table(run: dict) -> None:
    print(f"\n{run['label']}")
    print(f"{'conc':>5} {'req/s':>7} {'out tok/s':>10} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8} {'errors':>7}")
    for r in run["results"]:
        print(f"{r.concurrency:>5} {r.req_s:>7.2f} {r.tok_s:>10.1f} {pct(r.ttft, 50):>9.0f} {pct(r.ttft, 99):>9.0f} "
              f"{pct(r.itl, 50):>8.1f} {pct(r.itl, 99):>8.1f} {r.errors:>7}")
    print(f"worker RSS: {run['rss_start_mib']:.0f} MiB after warm-up, peak under load {run['rss_peak_mib']:.0f} MiB "
          f"(+{run['rss_peak_mib'] - run['rss_start_mib']:.0f} MiB)")


Series = tuple[str, list[int], list[float], list[float]]  # label, concurrency, tok/s, TTFT p50 ms


def plot_series(series: list[Series], path: Path, title: str) -> None:
    """Throughput and TTFT p50 against concurrency, one line per series (also bench/versus.py's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for label, xs, tok_s, ttft in series:
        a.plot(xs, tok_s, marker="o", label=label)
        b.plot(xs, ttft, marker="o", label=label)
    a.set(xlabel="concurrent streams", ylabel="output tokens/s", title="Throughput", xscale="log")
    b.set(xlabel="concurrent streams", ylabel="TTFT p50 (ms)", title="Time to first token", xscale="log", yscale="log")
    ticks = sorted({x for _, xs, _, _ in series for x in xs})
    for ax in (a, b):
        ax.set_xticks(ticks, [str(x) for x in ticks])
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def plot(runs: list[dict], path: Path) -> None:
    plot_series([(run["label"], [r.concurrency for r in run["results"]], [r.tok_s for r in run["results"]],
                  [pct(r.ttft, 50) for r in run["results"]]) for run in runs], path, f"LLM-Host, {MODEL_ID}")


MODEL_ID = MODEL


def main() -> None:
    global MODEL_ID
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--url", help="drive this running server instead of starting one")
    p.add_argument("--model", default=MODEL)
    p.add_argument("--levels", default="1,4,16,32", help="concurrency levels (batched)")
    p.add_argument("--unbatched-levels", default="1,4,16", help="levels for the one-at-a-time worker")
    p.add_argument("--no-unbatched", action="store_true", help="skip the one-at-a-time comparison")
    p.add_argument("--rounds", type=int, default=2, help="requests per client per level")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--samples", type=int, default=40, help="max_tokens=1 requests for the queue overhead")
    p.add_argument("--threads", type=int, default=2, help="worker torch threads (when starting servers)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--plot", default=str(ROOT / "bench" / "results" / "load.png"))
    args = p.parse_args()
    MODEL_ID = args.model
    levels = [int(x) for x in args.levels.split(",")]

    from tasks.contract.settings import get_settings

    models_dir = get_settings().models_dir
    base = InProcess(models_dir, args.dtype, args.threads)
    for _ in range(3):
        base.one_token()  # warm
    per_token = base.per_token_p50()
    print(f"in-process ({base.dtype}): decode {per_token:.1f} ms/token p50", flush=True)

    runs = []
    plans = [("batched", args.max_batch, levels)]
    if not args.no_unbatched and not args.url:
        plans.append(("one-at-a-time", 1, [int(x) for x in args.unbatched_levels.split(",")]))
    for label, max_batch, lv in plans:
        server = None
        url = args.url
        if not url:
            log = ROOT / "bench" / "results" / f"server-{label}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            server = Server(max_batch, args.threads, args.dtype, log)
            server.wait_ready()
            url = server.url
        try:
            runs.append(measure(url, f"{label} (max_batch {max_batch})", lv, args.rounds, args.max_tokens, args.samples,
                                base))
        finally:
            if server:
                server.stop()
        if server:  # its log holds each job's time in the engine
            runs[-1]["outside"] = outside_engine(log, runs[-1]["api_one"], runs[-1]["api_one_ids"])

    for run in runs:
        print_table(run)
    one, one_httpx, local = runs[0]["api_one"], runs[0]["api_one_httpx"], runs[0]["local_one"]
    print(f"\nqueue overhead (max_tokens=1 via API from a plain HTTP client, p50 {pct(one, 50):.1f} ms, minus the "
          f"same in process, p50 {pct(local, 50):.1f} ms, blocks of each in turns): p50 {pct(one, 50) - pct(local, 50):.1f} ms, "
          f"p99 {pct(one, 99) - pct(local, 50):.1f} ms (p99 - p99: {pct(one, 99) - pct(local, 99):.1f} ms; "
          f"in process alone p99 - p50: {pct(local, 99) - pct(local, 50):.1f} ms)")
    print(f"the same from httpx (p50 {pct(one_httpx, 50):.1f} ms): p50 {pct(one_httpx, 50) - pct(local, 50):.1f} ms, "
          f"p99 {pct(one_httpx, 99) - pct(local, 50):.1f} ms")
    outside = runs[0].get("outside")
    if outside:
        print(f"outside the engine (each plain-client request less its job's engine_seconds from the worker's log, "
              f"{len(outside)} of {len(one)} matched): p50 {pct(outside, 50):.1f} ms, p90 {pct(outside, 90):.1f} ms, "
              f"p99 {pct(outside, 99):.1f} ms")
    elif outside is None:
        print("outside the engine: not measured (a server started elsewhere: its log is not here)")
    else:
        print("outside the engine: no job's engine_seconds in the server's log (LLMHOST_LOG_FORMAT=json and "
              "LLMHOST_LOG_LEVEL=INFO or finer are needed)")
    c1 = next((r for r in runs[0]["results"] if r.concurrency == 1), None)
    if c1 and c1.itl:
        print(f"streaming cost per token (ITL p50 at 1 stream minus in-process): "
              f"{statistics.median(c1.itl) - per_token:.2f} ms")
    if len(runs) == 2:
        for c in set(levels) & {r.concurrency for r in runs[1]["results"]}:
            b = next(r for r in runs[0]["results"] if r.concurrency == c)
            u = next(r for r in runs[1]["results"] if r.concurrency == c)
            print(f"batched / one-at-a-time at {c:>2} streams: {b.tok_s / u.tok_s:.1f}x tokens/s")
    b1 = next((r for r in runs[0]["results"] if r.concurrency == 1), None)
    b16 = next((r for r in runs[0]["results"] if r.concurrency == 16), None)
    if b1 and b16:
        print(f"TTFT p50 at 16 streams / at 1 stream: {pct(b16.ttft, 50) / pct(b1.ttft, 50):.1f}x")
    plot(runs, Path(args.plot))
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
