"""The engine's fast paths give the tokens of the plain ones: the in-place slot KV cache
(handlers/slot_cache.py) against transformers' DynamicCache with rows joining, leaving, growing and
the buffers rebuilt; the decode step from the model's modules (handlers/fast_decode.py) against
the model's forward; the packed, fused bf16 linear layers (handlers/cpu_linear.py) against the
model's own ``nn.Linear``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from handlers import cpu_kernels, cpu_linear, fast_decode, slot_cache
from handlers.batch_cache import BatchCache
from handlers.engine import Engine
from handlers.slot_cache import HEADROOM, SlotCache
from tasks.contract.payloads import Message, SamplingParams
from tests.conftest import TINY_CHATML, TINY_GEMMA, TINY_LLAMA3
from tests.test_families import load

# (step at which it arrives, prompt, max_tokens): short and long prompts, rows leaving in between,
# a long prompt joining a narrow batch (the window grows to the left), a row joining an empty batch.
PLAN = [(0, "Tell me about the sea.", 14), (0, "Hi", 5), (2, "Once upon a time there was a long prompt " * 5, 20),
        (3, "x", 3), (6, "What is the capital of France?", 25), (6, "Write a poem about castles.", 9),
        (9, "A very long prompt arrives while the batch is narrow " * 6, 12), (30, "Hello again", 8),
        (40, "Once upon a time there was a long prompt " * 5 + "and then another", 6),  # a cached prefix
        (75, "After a gap, with nobody running.", 10)]


def run_plan(handler, slots: bool, params: SamplingParams, fast: bool = False, attention: str | None = None,
             kernels: bool = True) -> tuple[Engine, list[list[int]]]:
    """``attention``: the fast path's decode attention by name, instead of the one timed fastest here;
    ``kernels``: False for its torch ops instead of the C kernels (handlers/cpu_kernels.py)."""
    engine = Engine(handler, max_batch=4, slot_cache=slots, fast=fast)
    if not kernels:
        assert engine.fast is not None
        engine.fast.kernels = None
    if attention is not None:
        assert engine.fast is not None
        fd = engine.fast
        ways = fast_decode.attention_ways(handler.model.dtype, fd.heads, fd.kv_heads, fd.head_dim, fd.kernels)
        engine.fast.attention = next(way for way in ways if way.name == attention)
    pending, seqs, step = list(PLAN), [], 0
    with torch.inference_mode():
        while pending or engine.has_work():
            while pending and pending[0][0] <= step:
                _, text, max_tokens = pending.pop(0)
                ids = handler.encode_chat([Message(role="user", content=text)])
                seqs.append(engine.add(f"r{len(seqs)}", ids, params, max_tokens))
            engine.step()
            step += 1
    return engine, [seq.token_ids for seq in seqs]


@pytest.mark.parametrize("model_id", [TINY_CHATML, TINY_LLAMA3])
def test_slot_cache_gives_the_dynamic_caches_tokens(tiny_models, model_id, monkeypatch):
    monkeypatch.setattr(slot_cache, "HEADROOM", 3)  # rebuilds every few steps
    monkeypatch.setattr(slot_cache, "ROW_STEP", 1)  # and whenever a row joins a full buffer
    rebuilds = []
    real = SlotCache._rebuild
    monkeypatch.setattr(SlotCache, "_rebuild", lambda self, *a, **k: (rebuilds.append(a), real(self, *a, **k)))
    h = load(tiny_models, model_id, dtype="float32")
    ignore = SamplingParams(temperature=0, ignore_eos=True)
    plain, expected = run_plan(h, False, ignore)
    fast, got = run_plan(h, True, ignore)
    assert type(plain.kv) is BatchCache and type(fast.kv) is SlotCache and fast.fast is None
    assert got == expected
    # Whichever attention this machine's CPU runs faster, with the C kernels and with the torch ops.
    ways = [(way.name, True) for way in fast_decode.attention_ways(torch.float32, 4, 2, 16, cpu_kernels.load())]
    assert len(ways) == 2 + (cpu_kernels.load() is not None)  # the C kernel's attention where there are kernels
    for attention, kernels in ways + [(name, False) for name in fast_decode.ATTENTIONS]:
        fastest, decoded = run_plan(h, True, ignore, fast=True, attention=attention, kernels=kernels)
        assert fastest.fast is not None  # both tiny models are Llama-shaped (Qwen2, Llama)
        assert (fastest.fast.kernels is not None) == (kernels and cpu_kernels.load() is not None)
        # rows joining in the running rows' pass, from cached prefixes too
        assert decoded == expected, (attention, kernels)
        assert fastest.prefix_cache is not None and fastest.prefix_cache.hits > 0
    assert [len(t) for t in got] == [n for _, _, n in PLAN]
    assert len(rebuilds) > 5  # growth to the right, room on the left, more rows: all exercised
    assert fast.kv.rows == 0 and fast.kv_tokens == 0 and fast.kv.k == []  # emptied, memory dropped


def test_rows_join_in_the_running_rows_pass_with_their_own_tokens(tiny_models):
    """With the fast path a prefill is part of a decode pass: the running row advances in the same
    step as new rows get their first tokens, prefills may follow one another, and every sequence
    still gets the tokens it gets alone (fp32)."""
    h = load(tiny_models, TINY_CHATML, dtype="float32")
    greedy = SamplingParams(temperature=0, ignore_eos=True)
    texts = ["Tell me about the sea.", "Hi", "Once upon a time there was a long prompt " * 4, "x"]
    prompts = [h.encode_chat([Message(role="user", content=t)]) for t in texts]
    engine = Engine(h, max_batch=4)
    assert engine.fast is not None
    with torch.inference_mode():
        first = engine.add("a", prompts[0], greedy, 12)
        engine.step()
        assert len(first.token_ids) == 1
        seqs = [first]
        for n, ids in enumerate(prompts[1:], start=1):  # one arrival per step, each prefilled at once
            seqs.append(engine.add(f"s{n}", ids, greedy, 12))
            engine.step()
            assert [len(s.token_ids) for s in seqs] == list(range(n + 1, 0, -1))
        while engine.has_work():
            engine.step()
        alone = []
        for n, ids in enumerate(prompts):
            solo = Engine(h, max_batch=1, prefix_cache_tokens=0, slot_cache=False, fast=False)
            alone.append(solo.add(f"alone{n}", ids, greedy, 12))
            while solo.has_work():
                solo.step()
    assert [s.token_ids for s in seqs] == [s.token_ids for s in alone]


def test_a_row_joining_when_no_column_is_left_gets_its_own_tokens(tiny_models, monkeypatch):
    """A row joins in the decode pass exactly when the buffers have no column left at ``end`` and
    the window does not start at column 0 (a long row has left): its place must be made before it
    is given one (a rebuild after that moved the window under it: a crash, or wrong columns)."""
    monkeypatch.setattr(slot_cache, "HEADROOM", 2)
    h = load(tiny_models, TINY_CHATML, dtype="float32")
    greedy = SamplingParams(temperature=0, ignore_eos=True)
    prompts = [h.encode_chat([Message(role="user", content=t)])
               for t in ("A long prompt that leaves soon " * 6, "Hi", "Joins at the right edge")]
    engine = Engine(h, max_batch=4, prefix_cache_tokens=0)
    assert engine.fast is not None
    with torch.inference_mode():
        engine.add("long", prompts[0], greedy, 2)
        short = engine.add("short", prompts[1], greedy, 12)
        while len(engine.running) != 1 or engine.kv.end < engine.kv.mask_buf.shape[1]:
            engine.step()
        assert engine.kv.start > 0 and engine.kv.end == engine.kv.mask_buf.shape[1]
        late = engine.add("late", prompts[2], greedy, 12)
        while engine.has_work():
            engine.step()
        alone = []
        for n, ids in enumerate(prompts[1:]):
            solo = Engine(h, max_batch=1, prefix_cache_tokens=0, slot_cache=False, fast=False)
            alone.append(solo.add(f"alone{n}", ids, greedy, 12))
            while solo.has_work():
                solo.step()
    assert [short.token_ids, late.token_ids] == [s.token_ids for s in alone]


def test_slot_cache_window_is_as_wide_as_the_longest_row(tiny_models):
    h = load(tiny_models, TINY_CHATML, dtype="float32")
    engine = Engine(h, max_batch=4)
    short = h.encode_chat([Message(role="user", content="Hi")])
    long = h.encode_chat([Message(role="user", content="A long prompt " * 12)])
    with torch.inference_mode():
        engine.add("short", short, SamplingParams(temperature=0, ignore_eos=True), 30)
        engine.add("long", long, SamplingParams(temperature=0, ignore_eos=True), 3)
        for _ in range(6):
            engine.step()
    kv = engine.kv
    assert isinstance(kv, SlotCache) and [s.id for s in engine.running] == ["short"]
    assert kv.width == int(kv.lengths.max()) == kv.mask.shape[1]  # the long row's columns were dropped
    assert int(kv.mask.sum()) == kv.tokens


def test_models_with_sliding_windows_keep_the_dynamic_cache(tiny_models):
    h = load(tiny_models, TINY_GEMMA, dtype="float32")
    engine = Engine(h)
    assert type(engine.kv) is BatchCache and engine.fast is None


def test_fast_decode_on_packed_bf16_layers_gives_the_models_logits(tiny_models):
    if not cpu_linear.available():
        pytest.skip("no oneDNN bf16 kernels on this CPU or torch (cpu_linear.available)")
    h = load(tiny_models, TINY_LLAMA3, dtype="bfloat16")
    engine = Engine(h, max_batch=4)
    assert engine.fast is not None and fast_decode._joined(
        h.model.model.layers[0].mlp.gate_proj, h.model.model.layers[0].mlp.up_proj) is not None
    with torch.inference_mode():
        for text in ("Hi", "A longer prompt, so that the rows are padded " * 3, "x"):
            engine.add(text, h.encode_chat([Message(role="user", content=text)]),
                       SamplingParams(temperature=0, ignore_eos=True), 20)
        while engine.waiting:
            engine.step()
        inputs = engine.kv.decode_inputs()
        model = h.model(**inputs, use_cache=True).logits[:, -1].float()
        kernels = engine.fast.kernels
        for fused in (kernels, None):
            fd = engine.fast
            for attention in fast_decode.attention_ways(torch.bfloat16, fd.heads, fd.kv_heads, fd.head_dim, fused):
                engine.fast.attention, engine.fast.kernels = attention, fused
                torch.testing.assert_close(engine.fast(engine.kv).float(), model, atol=0.1, rtol=0.05,
                                           msg=f"{attention.name}, C kernels {fused is not None}")


def test_packed_linear_layers_give_the_models_logits(tiny_models):
    if not cpu_linear.available():
        pytest.skip("no oneDNN bf16 kernels on this CPU or torch (cpu_linear.available)")
    plain = load(tiny_models, TINY_CHATML, dtype="bfloat16", cpu_kernels=False)
    packed = load(tiny_models, TINY_CHATML, dtype="bfloat16")
    attn = packed.model.model.layers[0].self_attn
    assert isinstance(attn.q_proj, cpu_linear.FusedMember) and isinstance(attn.o_proj, cpu_linear.PackedLinear)
    assert not any(type(m) is nn.Linear for m in packed.model.modules())
    ids = torch.tensor([plain.encode_chat([Message(role="user", content="Tell me about the sea.")])] * 3)
    with torch.inference_mode():
        a, b = plain.model(ids).logits.float(), packed.model(ids).logits.float()
    torch.testing.assert_close(b, a, atol=0.05, rtol=0.02)


def test_fp32_layers_are_packed(tiny_models):
    """fp32 is packed for oneDNN too (MKL is slow from 4 rows on, on Intel's CPUs and AMD's alike);
    packed, the logits are the model's, alone or in a batch."""
    if not cpu_linear.onednn():
        pytest.skip("this torch has no oneDNN")
    plain = load(tiny_models, TINY_CHATML, dtype="float32", cpu_kernels=False)
    packed = load(tiny_models, TINY_CHATML, dtype="float32")
    assert not any(type(m) is nn.Linear for m in packed.model.modules())
    rows = [plain.encode_chat([Message(role="user", content=t)]) for t in ("Tell me about the sea.", "Hi there, you!")]
    width = max(map(len, rows))
    ids = torch.tensor([[plain.pad_id] * (width - len(r)) + r for r in rows])
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(r) for r in rows])[:, None]).long()
    with torch.inference_mode():
        a, b = plain.model(ids, attention_mask=mask).logits, packed.model(ids, attention_mask=mask).logits
        alone = packed.model(ids[1:], attention_mask=mask[1:]).logits
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(alone[0], b[1], atol=1e-5, rtol=1e-5)  # a row alone is the row in a batch


def test_fused_siblings_are_right_in_any_order_and_for_any_input():
    if not cpu_linear.available():
        pytest.skip("no oneDNN bf16 kernels on this CPU or torch (cpu_linear.available)")
    torch.manual_seed(0)
    block = nn.Module()
    for name, out in (("q_proj", 8), ("k_proj", 4), ("v_proj", 4)):
        setattr(block, name, nn.Linear(16, out, bias=name != "v_proj").to(torch.bfloat16))
    ref = {n: (getattr(block, n).weight.float(), getattr(block, n).bias) for n in ("q_proj", "k_proj", "v_proj")}
    assert cpu_linear.optimize(block, torch.device("cpu"), torch.bfloat16) == 3
    x, y = torch.randn(2, 16, dtype=torch.bfloat16), torch.randn(2, 16, dtype=torch.bfloat16)

    def want(name, inp):
        w, b = ref[name]
        out = inp.float() @ w.T
        return out + b.float() if b is not None else out

    for name, inp in [("v_proj", x), ("q_proj", x), ("k_proj", y), ("k_proj", x), ("q_proj", y), ("v_proj", y)]:
        torch.testing.assert_close(getattr(block, name)(inp).float(), want(name, inp), atol=0.05, rtol=0.02)


def test_a_fresh_batch_reuses_the_last_batchs_buffers_and_gets_its_own_tokens(tiny_models):
    """When the batch empties its (small) buffers are kept; the next batch writes over the old
    rows' keys, values and mask, which must hide them: its rows get the tokens they get alone in a
    new engine (fp32), the shorter row's padding included."""
    h = load(tiny_models, TINY_LLAMA3, dtype="float32")
    greedy = SamplingParams(temperature=0, ignore_eos=True)
    old = [h.encode_chat([Message(role="user", content=f"A long prompt {i} that leaves its keys behind " * 4)])
           for i in range(2)]
    new = [h.encode_chat([Message(role="user", content="Hi")]),
           h.encode_chat([Message(role="user", content="Tell me something about the sea, please.")])]

    def run(engine: Engine, prompts: list[list[int]], n: int) -> list[list[int]]:
        seqs = [engine.add(f"s{i}-{len(ids)}", ids, greedy, n) for i, ids in enumerate(prompts)]
        with torch.inference_mode():
            while engine.has_work():
                engine.step()
        return [seq.token_ids for seq in seqs]

    engine = Engine(h, max_batch=4, prefix_cache_tokens=0)
    run(engine, old, 12)
    kv = engine.kv
    assert isinstance(kv, SlotCache) and kv.rows == 0 and kv._spare is not None
    spare = kv._spare[0][0]
    assert spare.abs().sum() > 0 and kv._spare[2].sum() > 0  # the old rows' keys and mask are still there
    tokens = run(engine, new, 10)
    assert kv._spare is not None and kv._spare[0][0] is spare  # the same buffers, used again
    assert tokens == [run(Engine(h, max_batch=4, prefix_cache_tokens=0), [ids], 10)[0] for ids in new]
    engine.release()
    assert kv._spare is None


def test_only_the_written_region_is_checked_and_it_holds_every_key_written(tiny_models):
    """The spare check looks at the rows and columns writes reached (``dirty``), not the whole
    buffers (a full pass over them cost milliseconds on every request of a quiet server). So every
    nonzero value must lie inside that region, after joins mid-batch, rows leaving and a rebuild
    past the headroom; and a NaN inside it still drops the buffers."""
    h = load(tiny_models, TINY_LLAMA3, dtype="float32")
    greedy = SamplingParams(temperature=0, ignore_eos=True)
    prompts = [h.encode_chat([Message(role="user", content="Hi " * (1 + 5 * i))]) for i in range(3)]
    engine = Engine(h, max_batch=4, prefix_cache_tokens=0)
    engine.add("long", prompts[0], greedy, HEADROOM + 10)  # grows past the headroom: a rebuild
    with torch.inference_mode():
        for step in range(HEADROOM + 12):
            if step in (2, 5):  # join a running batch, then leave it early
                engine.add(f"join{step}", prompts[step // 2], greedy, 3)
            if engine.has_work():
                engine.step()
    kv = engine.kv
    assert isinstance(kv, SlotCache) and kv.rows == 0 and kv._spare is not None
    k, v, _, (rows, cols) = kv._spare
    assert rows >= 1 and cols > HEADROOM
    for t in (*k, *v):
        outside = t.clone()
        outside[:rows, :, :cols] = 0
        assert outside.abs().sum() == 0
    # A NaN where a row wrote: the next batch must not get these buffers.
    engine.add("again", prompts[1], greedy, 2)
    with torch.inference_mode():
        engine.step()
        kv.k[-1][0, 0, kv.start, 0] = float("nan")
        while engine.has_work():
            engine.step()
    assert kv._spare is None
    engine.release()
