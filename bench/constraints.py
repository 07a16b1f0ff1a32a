"""Which constrained-decoding library enforces ``response_format`` JSON schemas: measured, not guessed.

For every candidate installed in the environment (the others are listed as not installed) this

* prepares it for the SmolLM2 tokenizer (once per worker: ``setup ms``),
* compiles the small schema below (``compile ms``, median of 3 compiles with any cache off),
* runs a real greedy generation with SmolLM2-135M in-process (bf16, ``torch.set_num_threads(2)``):
  every step computes the allowed-token set and advances the matcher (``fill+advance``), masks the
  logits row (``apply``) and takes the argmax. Both are averaged over the generated tokens and
  compared with the model's own forward time per token (``model ms/tok``, median) as ``overhead %``.
  ``max µs`` is the worst step (first-use costs, preemption).
* feeds the same tokens again 20 times without the model and keeps the best pass (``replayed``):
  the steadiest per-token figure on a shared machine.

How the mask reaches the logits does not depend on the library (xgrammar, llguidance and
outlines-core fill the same 32-bit bitmask layout), so all three use xgrammar's CPU kernel for
``apply`` when it is installed; the library comparison is ``fill+advance``.

Measured on the development machine (2 cores shared with other work, no GPU), ``python -m
bench.constraints --repeats 2``, the quietest of 6 complete runs (load average 3.0–3.5):

| library | version | setup ms | compile ms | fill+advance µs/tok | apply µs/tok | mask+advance µs/tok | max µs | model ms/tok | overhead % | replayed, best pass: fill+advance / apply µs/tok |
|---|---|---|---|---|---|---|---|---|---|---|
| xgrammar | 0.2.8 | 176 | 5.3 | 73 | 210 | 283 | 1618 | 40.2 | 0.70 | 6 / 117 |
| llguidance | 1.9.1 | 1522 | 0.4 | 170 | 259 | 429 | 4488 | 46.9 | 0.92 | 25 / 144 |
| outlines-core | 0.2.14 | 175 | 52.9 | 53 | 337 | 391 | 4454 | 173.1 | 0.23 | 27 / 116 |
| lm-format-enforcer | 0.11.3 | 1046 | 0.0 | 1067 | 4444 | 5512 | 42744 | 42.4 | 13.00 | 789 / 3106 |

Noise: across the 6 runs (load average 2.6–5.5) the model's ms/token went from 34 to over 1,000 and
the in-generation µs figures moved by 2–5×; the replayed fill+advance stayed within xgrammar 6–30,
llguidance 19–81, outlines-core 27–55, lm-format-enforcer 789–1,422 µs, in the same order every run.
(outlines-core's ``overhead %`` above is low only because the model ran slowly during its turn.)

Choice: **xgrammar** (``handlers/constraints.py``).

* Lowest fill+advance per token of the libraries with full JSON Schema support (6 µs replayed,
  ~70 µs inside a real generation where the model's forward evicts its caches), setup 0.15 s, a
  small schema compiles in ~5 ms, a single-threaded CPU apply kernel that stays fast when the cores
  are busy, ``fork``/``reset``/``rollback``, jump-forward strings; the default structured-output
  backend of vLLM and SGLang, released regularly. Weak points, handled in handlers/constraints.py:
  some JSON Schema keywords compile but are silently ignored (the handler refuses them), and on
  Linux x86-64 it depends on triton (~1 GB installed).
* llguidance: a close second (3–4× xgrammar's fill+advance, still < 1% of a decode step), no
  dependencies, refuses unimplemented keywords itself ("Unimplemented keys: ["not"]"), but its
  tokenizer setup takes ~1.3 s and first-use mask steps are slower (lazy lexer); the fallback if
  triton's footprint ever matters more than per-token cost.
* outlines-core: cheapest in-generation fill (a precomputed DFA table), but a schema becomes a regex
  DFA over the whole vocabulary: 53 ms for this schema, 0.7 s for a nested one and 10 s for
  ``{"type": "object"}`` (json_object), and recursive schemas are only approximated.
* lm-format-enforcer: pure Python, ~1 ms per token (13% of SmolLM2's step); its transformers
  integration does not import with transformers 5 (``transformers.tokenization_utils``), so the
  adapter below builds its tokenizer data by hand.

Usage: ``python -m bench.constraints [--tokens 60] [--repeats 3] [--replays 20] [--threads 2]
[--only xgrammar ...]``. Greedy SmolLM2 keeps repeating list items for this prompt, so the
generations are cut at ``--tokens`` ("cut at max tokens" in the output column): the timing is the
point here; tests/test_constraints.py checks that complete outputs validate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"

# An object with a string, an integer, an enum and an array of strings, all required.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "color": {"type": "string", "enum": ["red", "green", "blue"]},
        "hobbies": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "color", "hobbies"],
    "additionalProperties": False,
}
PROMPT = ("Describe a fictional person as JSON with the fields name, age, favourite color (red, green or blue) "
          "and a list of at least six hobbies.")


# --- one adapter per library: setup(tokenizer) → compile(schema) → start() → mask/accept ---------


def _torch_apply(logits: torch.Tensor, bitmask: torch.Tensor, shifts=torch.arange(32, dtype=torch.int32)) -> None:
    """Apply a 32-bit-per-word token bitmask (bit ``j`` of word ``i`` = token ``32 i + j`` allowed).
    llguidance, outlines-core and xgrammar share that layout, and how the mask reaches the logits
    does not depend on which library computed it, so all three use xgrammar's single-threaded CPU
    kernel when it is installed (the libraries' own CPU paths need ``torch.compile``); else plain
    torch ops, which are much slower when other processes take the cores (multi-threaded op)."""
    try:
        import xgrammar

        xgrammar.apply_token_bitmask_inplace(logits, bitmask.view(1, -1) if bitmask.dim() == 1 else bitmask)
        return
    except ImportError:
        pass
    bits = ((bitmask.view(-1, 1) >> shifts) & 1).view(-1)[: logits.shape[-1]].bool()
    logits.masked_fill_(~bits, float("-inf"))


class Candidate:
    name = ""
    dist = ""

    def setup(self, tokenizer, vocab_size: int, stop_ids: list[int]) -> None: ...
    def compile(self, schema: dict) -> Any: ...
    def start(self, grammar: Any) -> Any: ...
    def fill(self, state: Any) -> None: ...  # compute the allowed-token set into the adapter's buffer
    def apply(self, state: Any, logits: torch.Tensor) -> None: ...  # put it on the logits row
    def accept(self, state: Any, token: int) -> bool: ...
    def done(self, state: Any) -> bool: ...


class XGrammar(Candidate):
    name = dist = "xgrammar"

    def setup(self, tokenizer, vocab_size, stop_ids):
        import xgrammar as xgr

        self.xgr = xgr
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stop_ids)
        self.bitmask = xgr.allocate_token_bitmask(1, self.info.vocab_size)

    def compile(self, schema):
        compiler = self.xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)
        return compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, strict_mode=True)

    def start(self, grammar):
        return self.xgr.GrammarMatcher(grammar, max_rollback_tokens=0)

    def fill(self, state):
        state.fill_next_token_bitmask(self.bitmask)

    def apply(self, state, logits):
        _torch_apply(logits, self.bitmask)  # its native CPU kernel

    def accept(self, state, token):
        return state.accept_token(token)

    def done(self, state):
        return state.is_completed()


class LLGuidance(Candidate):
    name = dist = "llguidance"

    def setup(self, tokenizer, vocab_size, stop_ids):
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.ll = llguidance
        self.tok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=stop_ids[0])
        self.bitmask = llguidance.torch.allocate_token_bitmask(1, vocab_size)

    def compile(self, schema):
        grammar = self.ll.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        matcher = self.ll.LLMatcher(self.tok, grammar, log_level=0)  # builds the parser: its compile step
        assert not matcher.is_error(), matcher.get_error()
        return grammar

    def start(self, grammar):
        return self.ll.LLMatcher(self.tok, grammar, log_level=0)

    def fill(self, state):
        self.ll.torch.fill_next_token_bitmask(state, self.bitmask)

    def apply(self, state, logits):
        _torch_apply(logits, self.bitmask)

    def accept(self, state, token):
        return state.consume_token(token)

    def done(self, state):
        return state.is_accepting()


class OutlinesCore(Candidate):
    name, dist = "outlines-core", "outlines-core"

    def setup(self, tokenizer, vocab_size, stop_ids):
        import outlines_core

        self.oc = outlines_core
        # Byte-level BPE: token strings are bytes spelled with GPT-2's byte→unicode table.
        table = _bytes_to_unicode()
        inverse = {c: b for b, c in table.items()}
        special = set(tokenizer.all_special_ids)
        words: dict[bytes, list[int]] = {}
        for token, idx in tokenizer.get_vocab().items():
            if idx in special or idx >= vocab_size:
                continue
            raw = bytes(inverse[c] for c in token) if all(c in inverse for c in token) else token.encode()
            words.setdefault(raw, []).append(idx)
        self.vocab = outlines_core.Vocabulary(stop_ids[0], words)
        self.bitmask = torch.full((1, (vocab_size + 31) // 32), -1, dtype=torch.int32)

    def compile(self, schema):
        regex = self.oc.json_schema.build_regex_from_schema(json.dumps(schema), r"[ ]?")
        return self.oc.Index(regex, self.vocab)

    def start(self, grammar):
        return self.oc.Guide(grammar)

    def fill(self, state):
        state.write_mask_into(self.bitmask.data_ptr(), self.bitmask.numel(), self.bitmask.element_size())

    def apply(self, state, logits):
        _torch_apply(logits, self.bitmask)

    def accept(self, state, token):
        try:
            state.advance(token, return_tokens=False)
        except ValueError:
            return False
        return True

    def done(self, state):
        return state.is_finished()


class LMFormatEnforcer(Candidate):
    name, dist = "lm-format-enforcer", "lm-format-enforcer"

    def setup(self, tokenizer, vocab_size, stop_ids):
        # Its transformers integration imports ``transformers.tokenization_utils``, which
        # transformers 5 no longer has; this is the same tokenizer data built by hand.
        from lmformatenforcer import TokenEnforcerTokenizerData

        token_0 = tokenizer.encode("0")[-1]
        special = set(tokenizer.all_special_ids)
        regular = []
        for idx in range(len(tokenizer)):
            if idx in special:
                continue
            after_0 = tokenizer.decode([token_0, idx])[1:]
            regular.append((idx, after_0, len(after_0) > len(tokenizer.decode([idx]))))

        def decode(tokens: list[int]) -> str:
            return tokenizer.decode(tokens).rstrip("\ufffd")

        self.data = TokenEnforcerTokenizerData(regular, decode, stop_ids[0], False, len(tokenizer))

    def compile(self, schema):
        from lmformatenforcer import JsonSchemaParser, TokenEnforcer

        return lambda: TokenEnforcer(self.data, JsonSchemaParser(schema))

    def start(self, grammar):
        return {"enforcer": grammar(), "tokens": [], "allowed": None}

    def fill(self, state):
        state["allowed"] = state["enforcer"].get_allowed_tokens(state["tokens"]).allowed_tokens

    def apply(self, state, logits):
        keep = torch.full_like(logits, float("-inf"))
        idx = torch.tensor(state["allowed"])
        keep[idx] = logits[idx]
        logits.copy_(keep)

    def accept(self, state, token):
        if state["allowed"] is not None and token not in state["allowed"]:
            return False
        state["tokens"].append(token)
        return True

    def done(self, state):
        # The enforcer has no "complete" flag: complete when EOS is allowed.
        allowed = state["enforcer"].get_allowed_tokens(state["tokens"]).allowed_tokens
        return self.data.eos_token_id in allowed


CANDIDATES: dict[str, type[Candidate]] = {c.name: c for c in (XGrammar, LLGuidance, OutlinesCore, LMFormatEnforcer)}
MODULES = {"xgrammar": "xgrammar", "llguidance": "llguidance", "outlines-core": "outlines_core",
           "lm-format-enforcer": "lmformatenforcer"}


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


# --- the measurement ------------------------------------------------------------------------------


def load_model(models_dir: Path, threads: int):
    sys.path.insert(0, str(ROOT))
    from handlers.registry import detect_family, handler_class
    from tasks.contract.payloads import LoadOptions

    folder = models_dir / SMOL
    options = LoadOptions(dtype="bfloat16", torch_threads=threads)
    handler = handler_class(detect_family(SMOL, folder))(SMOL, folder, options)
    handler.load()
    torch.set_num_threads(threads)
    return handler


def generate(handler, cand: Candidate, grammar: Any, max_tokens: int) -> dict[str, Any]:
    """One greedy constrained generation: per-token seconds of the model forward, of computing the
    allowed set + advancing the matcher (``fill``, ``accept``) and of masking the logits (``apply``)."""
    from tasks.contract.payloads import Message

    prompt = handler.encode_chat([Message(role="user", content=PROMPT)])
    state = cand.start(grammar)
    model_s, fill_s, apply_s, tokens = [], [], [], []
    cache, ids = None, torch.tensor([prompt])
    completed = False
    with torch.inference_mode():
        for step in range(max_tokens + 1):
            t0 = time.perf_counter()
            out = handler.model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[0, -1]
            t1 = time.perf_counter()
            if step:  # the prefill is not a decode step
                model_s.append(t1 - t0)
            cand.fill(state)
            t2 = time.perf_counter()
            cand.apply(state, logits)
            t3 = time.perf_counter()
            token = int(torch.argmax(logits))
            t4 = time.perf_counter()
            ok = cand.accept(state, token) if token not in handler.stop_ids else True
            fill_s.append(t2 - t1 + time.perf_counter() - t4)
            apply_s.append(t3 - t2)
            if not ok:
                raise RuntimeError(f"{cand.name} refused its own allowed token {token}")
            if token in handler.stop_ids:
                completed = True
                break
            tokens.append(token)
            cache, ids = out.cache, torch.tensor([[token]])
    return {"model": model_s, "fill": fill_s, "apply": apply_s, "text": handler.tokenizer.decode(tokens),
            "completed": completed, "tokens": tokens + ([min(handler.stop_ids)] if completed else [])}


def replay(cand: Candidate, grammar: Any, tokens: list[int], times: int, width: int) -> tuple[float, float]:
    """Feed a generated token sequence again ``times`` times without the model; seconds per token of
    fill+advance and of apply, each the best of the ``times`` passes (as ``timeit`` does: on a shared
    machine the least disturbed pass is the closest to the real cost)."""
    row = torch.randn(width, dtype=torch.bfloat16)
    best_fill = best_apply = float("inf")
    for _ in range(times):
        state = cand.start(grammar)
        fill = apply = 0.0
        for token in tokens:
            logits = row.clone()
            t0 = time.perf_counter()
            cand.fill(state)
            t1 = time.perf_counter()
            cand.apply(state, logits)
            t2 = time.perf_counter()
            cand.accept(state, token)
            t3 = time.perf_counter()
            fill += (t1 - t0) + (t3 - t2)
            apply += t2 - t1
        best_fill, best_apply = min(best_fill, fill / len(tokens)), min(best_apply, apply / len(tokens))
    return best_fill, best_apply


def measure(handler, name: str, max_tokens: int, repeats: int, replays: int) -> dict[str, Any]:
    cand = CANDIDATES[name]()
    stop = sorted(handler.stop_ids)
    vocab = handler.model.get_output_embeddings().out_features
    t = time.perf_counter()
    cand.setup(handler.tokenizer, vocab, stop)
    setup_ms = (time.perf_counter() - t) * 1e3
    compiles = []
    for _ in range(3):
        t = time.perf_counter()
        grammar = cand.compile(SCHEMA)
        compiles.append((time.perf_counter() - t) * 1e3)
    runs = [generate(handler, cand, grammar, max_tokens) for _ in range(repeats)]
    model = [x for r in runs for x in r["model"]]
    fill = [x for r in runs for x in r["fill"]]
    apply = [x for r in runs for x in r["apply"]]
    total = [f + a for f, a in zip(fill, apply)]
    model_ms = statistics.median(model) * 1e3
    replay_fill, replay_apply = replay(cand, grammar, runs[-1]["tokens"], replays, vocab) if replays else (0.0, 0.0)
    total_us = statistics.mean(total) * 1e6
    return {"library": name, "version": version(cand.dist), "setup_ms": setup_ms,
            "compile_ms": statistics.median(compiles),
            "fill_us": statistics.mean(fill) * 1e6, "apply_us": statistics.mean(apply) * 1e6, "us_per_token": total_us,
            "max_us": max(total) * 1e6, "model_ms": model_ms, "overhead": total_us / 1e3 / model_ms * 100,
            "replay_fill_us": replay_fill * 1e6, "replay_apply_us": replay_apply * 1e6,
            "tokens": len(total) // repeats, "valid": _valid(runs[-1]["text"]), "completed": runs[-1]["completed"],
            "text": runs[-1]["text"]}


def _valid(text: str) -> str:
    try:
        value = json.loads(text)
    except ValueError:
        return "not JSON"
    try:
        import jsonschema
    except ImportError:
        return "JSON"
    try:
        jsonschema.validate(value, SCHEMA)
    except jsonschema.ValidationError as e:
        return f"invalid: {e.message}"
    return "valid"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.constraints",
        description="Compare constrained-decoding libraries on SmolLM2-135M (compile time, per-token mask+advance cost "
                    "vs the model's own decode time). Candidates that are not installed are listed as such.")
    ap.add_argument("--models-dir", type=Path, default=ROOT / "LLM", help="folder holding " + SMOL)
    ap.add_argument("--tokens", type=int, default=60, help="max generated tokens per run (default 60)")
    ap.add_argument("--repeats", type=int, default=3, help="generations per library (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--replays", type=int, default=20,
                    help="times the generated tokens are fed again without the model, for steadier per-token "
                         "figures (default 20; 0 = off)")
    ap.add_argument("--only", nargs="*", choices=list(CANDIDATES), help="measure only these")
    ap.add_argument("--show-text", action="store_true", help="print each library's generated JSON")
    args = ap.parse_args(argv)

    names = args.only or list(CANDIDATES)
    missing = []
    for n in list(names):
        try:
            version(CANDIDATES[n].dist)
            import_module(MODULES[n])
        except (PackageNotFoundError, ImportError):
            names.remove(n)
            missing.append(n)
    load0 = os.getloadavg()[0]
    handler = load_model(args.models_dir, args.threads)
    with torch.inference_mode():  # warm the model up once, so the first library measured pays no first-call costs
        from tasks.contract.payloads import Message

        ids = torch.tensor([handler.encode_chat([Message(role="user", content=PROMPT)])])
        out = handler.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        for _ in range(8):
            out = handler.model(input_ids=out.logits[:, -1].argmax(-1, keepdim=True), cache=out.cache, use_cache=True)
    rows = []
    for n in names:
        t = time.perf_counter()
        rows.append(measure(handler, n, args.tokens, args.repeats, args.replays))
        print(f"{n}: measured in {time.perf_counter() - t:.1f} s", file=sys.stderr)

    load = os.getloadavg()[0]
    print(f"SmolLM2-135M bf16, torch threads {args.threads}, greedy, ≤{args.tokens} tokens × {args.repeats} runs; "
          f"load average at start {load0:.1f}, at end {load:.1f} on {os.cpu_count()} cores")
    print("| library | version | setup ms | compile ms | fill+advance µs/tok | apply µs/tok | mask+advance µs/tok "
          "| max µs | model ms/tok | overhead % | replayed, best pass: fill+advance / apply µs/tok | tokens | output |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        out = r["valid"] if r["completed"] else "cut at max tokens"
        print(f"| {r['library']} | {r['version']} | {r['setup_ms']:.0f} | {r['compile_ms']:.1f} | {r['fill_us']:.0f} "
              f"| {r['apply_us']:.0f} | {r['us_per_token']:.0f} | {r['max_us']:.0f} | {r['model_ms']:.1f} "
              f"| {r['overhead']:.2f} | {r['replay_fill_us']:.0f} / {r['replay_apply_us']:.0f} "
              f"| {r['tokens']} | {out} |")
    for n in missing:
        print(f"| {n} | not installed | | | | | | | | | | | |")
    if args.show_text:
        for r in rows:
            print(f"{r['library']}: {r['text']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
