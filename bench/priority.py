"""Interactive before bulk: a streaming request's time to first token on an idle server, and with a
backlog of background jobs queued for the same model.

    python -m bench.priority                 # start a server itself (SmolLM2, bf16 where native)
    python -m bench.priority --backlog 200 --probes 5 --reserved-slots 0   # priorities off, to compare

Target (issue "Durable jobs"): with 200 background jobs queued, TTFT ≤ 2 × idle TTFT + 0.3 s.
Numbers, not asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import httpx

from bench.load import MODEL_ID, ROOT, Server


async def ttft(client: httpx.AsyncClient) -> float:
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "temperature": 0, "max_tokens": 8, "stream": True}
    start = time.perf_counter()
    first = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        async for line in r.aiter_lines():  # read to the end: the stream must finish
            if first is None and line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                first = time.perf_counter() - start
    if first is None:
        raise RuntimeError("no token")
    return first


async def measure(url: str, backlog: int, probes: int, max_tokens: int) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await ttft(client)  # warm up
        idle = [await ttft(client) for _ in range(probes)]
        bulk = {"model": MODEL_ID, "max_tokens": max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": "Write a long story about the sea."}]}
        ids = []
        for _ in range(backlog):
            r = await client.post("/v1/jobs", json={"endpoint": "/v1/chat/completions", "body": bulk})
            ids.append(r.json()["id"])
        await asyncio.sleep(2)  # the worker is full of background work, the rest waits in Redis
        busy = [await ttft(client) for _ in range(probes)]
        waiting = 0
        for i in ids:
            waiting += (await client.get(f"/v1/jobs/{i}")).json()["status"] == "queued"
        for i in ids:
            await client.delete(f"/v1/jobs/{i}")
    return {"idle": statistics.median(idle), "busy": statistics.median(busy), "busy_max": max(busy),
            "still_queued": waiting}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backlog", type=int, default=200)
    ap.add_argument("--probes", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64, help="output tokens of each background job")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--reserved-slots", type=int, default=None, help="LLMHOST_RESERVED_SLOTS (default: max_batch // 8)")
    args = ap.parse_args()
    log = ROOT / ".state" / "bench-priority.log"
    log.parent.mkdir(exist_ok=True)
    extra = {} if args.reserved_slots is None else {"LLMHOST_RESERVED_SLOTS": str(args.reserved_slots)}
    server = Server(32, args.threads, args.dtype, log, **extra)
    try:
        server.wait_ready()
        m = asyncio.run(measure(server.url, args.backlog, args.probes, args.max_tokens))
    finally:
        server.stop()
    target = 2 * m["idle"] + 0.3
    print(json.dumps({k: round(v, 3) for k, v in m.items()}))
    print(f"TTFT idle p50 {1000 * m['idle']:.0f} ms; with {args.backlog} background jobs queued p50 "
          f"{1000 * m['busy']:.0f} ms (max {1000 * m['busy_max']:.0f} ms); target ≤ {1000 * target:.0f} ms; "
          f"{m['still_queued']} background jobs were still queued at the end")


if __name__ == "__main__":
    main()
