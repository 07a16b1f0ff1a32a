"""The decode attentions side by side, in process: µs per layer for each way the engine can pick.

    python -m bench.attention                       # SmolLM2-135M's shapes (9 heads on 3, head size 64), bf16
    python -m bench.attention --dtype float32 --heads 32 --kv-heads 8 --dim 128

Each way of :func:`handlers.fast_decode.attention_ways` (two float32 matmuls, torch's
``scaled_dot_product_attention``, and the C kernel of ``handlers/cpu_kernels.c`` where it builds)
attends one query per row over a window of keys and values, every other row with a quarter of its
window masked as padding, the way a decode step calls it. ``from memory`` spreads the calls over
--layers layers' caches, as a step does, so that each layer's keys and values come from memory, not
from the cache the previous call left warm; ``in cache`` repeats one layer (what the engine's
start-up timing measures, :func:`handlers.fast_decode.decode_attention`). Best of --repeats rounds,
the ways taken in turns. Numbers, not asserts.
"""

from __future__ import annotations

import argparse
import time

import torch

from handlers import cpu_kernels
from handlers.fast_decode import attention_ways

SHAPES = [(1, 150), (4, 150), (16, 150), (32, 150), (32, 400)]


def per_layer_us(way, q, caches, mask, calls: int) -> float:
    prepared = way.mask(mask)
    for keys, values in caches[:2]:
        way(q, keys, values, prepared, 0.125)  # warm
    start = time.perf_counter()
    for _ in range(calls):
        for keys, values in caches:
            way(q, keys, values, prepared, 0.125)
    return (time.perf_counter() - start) / (calls * len(caches)) * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=30, help="layers' caches the 'from memory' calls go over")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    kernels = cpu_kernels.load()
    ways = attention_ways(dtype, args.heads, args.kv_heads, args.dim, kernels)
    names = [way.name for way in ways]
    print(f"{args.dtype}, {args.heads} heads on {args.kv_heads}, head size {args.dim}, {args.threads} threads; "
          f"C kernels: {'built' if kernels else 'none'}; µs per layer, best of {args.repeats}")
    print(f"{'rows':>5} {'columns':>8} {'where':>12} " + " ".join(f"{n:>8}" for n in names))
    with torch.inference_mode():
        for rows, cols in SHAPES:
            q = torch.randn(rows, args.heads, args.dim, dtype=dtype)
            mask = torch.ones(rows, cols, dtype=torch.long)
            mask[::2, :cols // 4] = 0
            caches = [tuple(torch.randn(rows, args.kv_heads, cols, args.dim, dtype=dtype) for _ in range(2))
                      for _ in range(args.layers)]
            for where, layers, calls in (("from memory", caches, max(1, 60 // args.layers)), ("in cache", caches[:1], 60)):
                best = {n: float("inf") for n in names}
                for _ in range(args.repeats):
                    for way in ways:
                        best[way.name] = min(best[way.name], per_layer_us(way, q, layers, mask, calls))
                print(f"{rows:>5} {cols:>8} {where:>12} " + " ".join(f"{best[n]:>8.0f}" for n in names), flush=True)


if __name__ == "__main__":
    main()
