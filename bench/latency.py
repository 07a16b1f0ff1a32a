"""Single-stream latency of a running LLM-Host: time to first token, tokens/s, worker RSS.

    python -m bench.latency --url http://127.0.0.1:41443 --model HuggingFaceTB/SmolLM2-135M-Instruct

Sends sequential streaming chat requests (greedy) over the real HTTP API with the openai SDK and
prints a table. Worker RSS is read from /proc for workers on this machine. Numbers, not asserts:
this is not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import httpx
from openai import OpenAI


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:41443")
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--requests", type=int, default=10)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt", default="What is the capital of France? Answer in one sentence.")
    args = p.parse_args()

    client = OpenAI(base_url=f"{args.url}/v1", api_key="unused", max_retries=0)
    ttft, total, rates, counts = [], [], [], []
    for i in range(args.requests + 1):  # the first request warms up and is not counted
        start = time.perf_counter()
        first = None
        stream = client.chat.completions.create(
            model=args.model, messages=[{"role": "user", "content": args.prompt}], temperature=0,
            max_tokens=args.max_tokens, stream=True, stream_options={"include_usage": True})
        tokens = 0
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and first is None:
                first = time.perf_counter() - start
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        elapsed = time.perf_counter() - start
        if i == 0:
            continue
        ttft.append((first or elapsed) * 1000)
        total.append(elapsed * 1000)
        counts.append(tokens)
        if first is not None and tokens > 1 and elapsed > first:
            rates.append((tokens - 1) / (elapsed - first))

    print(f"model {args.model}, {args.requests} sequential streaming requests, greedy, max_tokens {args.max_tokens}")
    print(f"{'metric':<28}{'p50':>10}{'p99':>10}{'mean':>10}")
    for name, vals in (("time to first token (ms)", ttft), ("request total (ms)", total),
                       ("decode tokens/s", rates), ("completion tokens", [float(c) for c in counts])):
        if vals:
            print(f"{name:<28}{pct(vals, 50):>10.1f}{pct(vals, 99):>10.1f}{statistics.fmean(vals):>10.1f}")
    status = httpx.get(f"{args.url}/old/status", timeout=5).json()
    for w in status.get("workers", []):
        rss = rss_mib(int(w["pid"]))
        shown = f"{rss:.0f} MiB" if rss is not None else "n/a (not on this host)"
        print(f"worker {w['model']:<45} {w['device']}/{w['dtype']:<9} pid {w['pid']:<8} RSS {shown}")


if __name__ == "__main__":
    main()
