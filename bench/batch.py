"""Does a batch keep the workers' continuous batching full? Batch API throughput beside streaming.

    python -m bench.batch                         # start a server itself (SmolLM2, max_batch 32)
    python -m bench.batch --lines 300             # fewer lines on a slow machine
    python -m bench.batch --url http://127.0.0.1:41443

On one server: the output tokens/s of N concurrent greedy streams (``bench/load.py``'s
``run_level``), then of a batch of ``--lines`` chat lines with the same prompts and ``max_tokens``
(tokens from the output file's ``usage``, time from ``POST /v1/batches`` to ``completed``), the
streams again (the drift of a shared machine shows), and the time to first token of a streaming
request sent while the batch runs against the same request on the idle server. Numbers, not asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import httpx

from bench import load
from bench.load import MODEL, ROOT, TOPICS, LevelResult, Server, one_stream, pct, run_level


def batch_file(lines: int, max_tokens: int) -> bytes:
    rows = []
    for i in range(lines):
        body = {"model": load.MODEL_ID, "temperature": 0, "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": f"Write a long story about {TOPICS[i % len(TOPICS)]}."}]}
        rows.append(json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}))
    return ("\n".join(rows) + "\n").encode()


def run_batch(url: str, lines: int, max_tokens: int, on_progress: Any = None) -> dict[str, Any]:
    """Upload, create, poll to the end; the output tokens and the wall time from create to the end."""
    with httpx.Client(base_url=url, timeout=120) as h:
        f = h.post("/v1/files", files={"file": ("bench.jsonl", batch_file(lines, max_tokens))}, data={"purpose": "batch"})
        f.raise_for_status()
        start = time.perf_counter()
        batch = h.post("/v1/batches", json={"input_file_id": f.json()["id"], "endpoint": "/v1/chat/completions",
                                            "completion_window": "24h"}).json()
        while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(0.5)
            batch = h.get(f"/v1/batches/{batch['id']}").json()
            if on_progress is not None:
                on_progress(batch)
        wall = time.perf_counter() - start
        tokens = 0
        if batch.get("output_file_id"):
            for line in h.get(f"/v1/files/{batch['output_file_id']}/content").text.splitlines():
                tokens += json.loads(line)["response"]["body"]["usage"]["completion_tokens"]
    return {"status": batch["status"], "counts": batch["request_counts"], "tokens": tokens, "wall": wall}


async def ttft_samples(url: str, samples: int, max_tokens: int = 8) -> list[float]:
    """Time to first token (ms) of ``samples`` streaming requests, one after another."""
    res = LevelResult(1)
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        for i in range(samples):
            await one_stream(client, f"Write a long story about {TOPICS[i % len(TOPICS)]}.", max_tokens, res)
    return res.ttft


def ttft_during_batch(url: str, lines: int, max_tokens: int, samples: int) -> tuple[dict[str, Any], list[float]]:
    """Run a batch and, once its lines flow, measure streams' TTFT meanwhile (in a thread of its own)."""
    import threading

    ttft: list[float] = []
    flowing = threading.Event()

    def probe() -> None:
        flowing.wait()
        ttft.extend(asyncio.run(ttft_samples(url, samples)))

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    result = run_batch(url, lines, max_tokens, on_progress=lambda b: b["request_counts"]["completed"] and flowing.set())
    flowing.set()
    thread.join()
    return result, ttft


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--url", help="drive this running server instead of starting one")
    p.add_argument("--model", default=MODEL)
    p.add_argument("--lines", type=int, default=1000)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--streams", type=int, default=32, help="concurrent streams of the comparison")
    p.add_argument("--rounds", type=int, default=2, help="requests per stream client")
    p.add_argument("--ttft-samples", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="worker torch threads (when starting a server)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--max-batch", type=int, default=32)
    args = p.parse_args()
    load.MODEL_ID = args.model
    server = None
    url = args.url
    if not url:
        log = ROOT / "bench" / "results" / "server-batch.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        server = Server(args.max_batch, args.threads, args.dtype, log)
        server.wait_ready()
        url = server.url
    try:
        asyncio.run(run_level(url, 2, 1, 8))  # warm-up
        idle = asyncio.run(ttft_samples(url, args.ttft_samples))
        streams = asyncio.run(run_level(url, args.streams, args.rounds, args.max_tokens))
        print(f"{args.streams} streams: {streams.tok_s:.1f} tok/s ({streams.tokens} tokens in {streams.wall:.1f} s, "
              f"errors {streams.errors})", flush=True)
        batch, busy = ttft_during_batch(url, args.lines, args.max_tokens, args.ttft_samples)
        # Again after the batch: on a shared machine the two readings show how much the load drifted.
        after = asyncio.run(run_level(url, args.streams, args.rounds, args.max_tokens))
    finally:
        if server:
            server.stop()
    tok_s = batch["tokens"] / batch["wall"] if batch["wall"] else 0.0
    print(f"\n{args.model}, max_tokens {args.max_tokens}, greedy")
    print(f"{'':28} {'out tok/s':>10} {'tokens':>8} {'wall s':>8}")
    print(f"{f'{args.streams} concurrent streams':28} {streams.tok_s:>10.1f} {streams.tokens:>8} {streams.wall:>8.1f}")
    print(f"{f'batch of {args.lines} lines':28} {tok_s:>10.1f} {batch['tokens']:>8} {batch['wall']:>8.1f}  "
          f"({batch['status']}, {batch['counts']})")
    print(f"{f'{args.streams} streams, after':28} {after.tok_s:>10.1f} {after.tokens:>8} {after.wall:>8.1f}")
    mean = (streams.tok_s + after.tok_s) / 2
    print(f"batch / streams (mean of before and after): {tok_s / mean:.0%}" if mean else "batch / streams: n/a")
    print(f"stream TTFT p50: idle {pct(idle, 50):.0f} ms, during the batch {pct(busy, 50):.0f} ms "
          f"(max {max(busy, default=float('nan')):.0f} ms; bound 2 x idle + 300 = "
          f"{2 * statistics.median(idle) + 300 if idle else float('nan'):.0f} ms)")


if __name__ == "__main__":
    main()
