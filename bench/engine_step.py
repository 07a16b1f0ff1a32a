"""In-process decode speed of the continuous-batching engine (handlers/engine.py), no server.

    python -m bench.engine_step                          # 16 and 32 sequences, 64 new tokens, greedy
    python -m bench.engine_step --constrained 16         # …with that many rows under a JSON grammar

Loads SmolLM2-135M-Instruct from ``LLM/`` in bfloat16 on 2 threads, adds N "Write a long story
about …" prompts at once and runs the engine until every sequence has its tokens (``ignore_eos``,
so every run does the same work). ``decode tok/s`` counts the tokens of decode steps over their
time only (a step that admitted nobody); ``overall tok/s`` is every token over the whole run,
prefills included. ``engine ms/step`` is the time a decode step spends outside the model's forward
(scheduling, sampling, text, KV rows joining and leaving): what the engine itself costs, and the
figure least disturbed by other work on the machine. Each configuration runs ``--repeats`` times and the best run is printed: on a
shared machine the fastest run is the one least disturbed by other work.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from handlers.engine import Engine
from handlers.registry import detect_family, handler_class
from tasks.contract.payloads import LoadOptions, Message, SamplingParams

ROOT = Path(__file__).resolve().parent.parent
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
TOPICS = ["a lighthouse keeper", "a dragon who hates gold", "the last train of the night", "a robot gardener",
          "two rival bakers", "a city under the sea", "a lost violin", "the winter the river froze"]


def load(dtype: str, threads: int):
    folder = ROOT / "LLM" / MODEL
    handler = handler_class(detect_family(MODEL, folder))(MODEL, folder, LoadOptions(dtype=dtype, torch_threads=threads))
    handler.load()
    return handler


class TimedModel:
    """The model (or the engine's fast decoder), with the time spent in its forward counted."""

    def __init__(self, model) -> None:
        self.model = model
        self.seconds = 0.0

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self.model(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0

    def __getattr__(self, name: str):
        return getattr(self.model, name)


def run_once(handler, n: int, tokens: int, constrained: int) -> tuple[float, float, float]:
    """(decode tok/s, overall tok/s, engine ms per decode step) of one run with ``n`` sequences."""
    engine = Engine(handler, max_batch=max(n, 1))
    # The forward a decode step runs: handlers/fast_decode.py's where the model allows, else the model's.
    if engine.fast is not None:
        timed = engine.fast = TimedModel(engine.fast)  # type: ignore[assignment]
    else:
        timed = engine.model = TimedModel(engine.model)
    grammar = handler.compile_constraint({"type": "json_object"}) if constrained else None
    seqs = []
    for i in range(n):
        prompt = f"Write a long story about {TOPICS[i % len(TOPICS)]} (number {i})."
        ids = handler.encode_chat([Message(role="user", content=prompt)])
        params = SamplingParams(temperature=0, ignore_eos=True)
        seqs.append(engine.add(f"s{i}", ids, params, tokens, grammar if i < constrained else None))
    decode_tokens = all_tokens = decode_steps = 0
    decode_s = outside_s = 0.0
    start = time.perf_counter()
    while engine.has_work():
        waiting = len(engine.waiting)
        before = sum(len(s.token_ids) for s in seqs)
        forward_s = timed.seconds
        t0 = time.perf_counter()
        engine.step()
        elapsed = time.perf_counter() - t0
        forward_s = timed.seconds - forward_s
        produced = sum(len(s.token_ids) for s in seqs) - before
        all_tokens += produced
        if len(engine.waiting) == waiting:  # nobody admitted: a decode step
            decode_tokens += produced
            decode_s += elapsed
            outside_s += elapsed - forward_s
            decode_steps += 1
    total_s = time.perf_counter() - start
    return decode_tokens / max(decode_s, 1e-9), all_tokens / total_s, 1000 * outside_s / max(decode_steps, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[16, 32])
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--constrained", type=int, default=0, help="rows under a json_object grammar")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    handler = load(args.dtype, args.threads)
    torch.set_num_threads(args.threads)
    with torch.inference_mode():
        run_once(handler, 2, 4, 0)  # warm-up: first-call allocations and kernel choices
    print(f"{MODEL} {args.dtype}, {args.threads} threads, {args.tokens} new tokens, greedy, "
          f"{args.constrained} constrained rows, best of {args.repeats}")
    for n in args.batches:
        runs = [run_once(handler, n, args.tokens, min(args.constrained, n)) for _ in range(args.repeats)]
        decode, overall, engine_ms = max(r[0] for r in runs), max(r[1] for r in runs), min(r[2] for r in runs)
        print(f"batch {n:3d}: decode {decode:7.1f} tok/s   overall {overall:7.1f} tok/s   engine {engine_ms:5.2f} ms/step"
              f"   (decode runs: {', '.join(f'{r[0]:.1f}' for r in runs)})")


if __name__ == "__main__":
    main()
