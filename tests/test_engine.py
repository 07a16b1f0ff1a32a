"""The continuous-batching engine: batched greedy output equals unbatched greedy output, sequences
join and leave mid-flight, aborts free their rows, the token budget holds."""

from __future__ import annotations

import pytest

from handlers.engine import Engine, SeqStatus, run_to_completion
from tasks.contract.payloads import Message, SamplingParams
from tests.conftest import SMOL, TINY_CHATML, TINY_LLAMA3, TINY_MISTRAL
from tests.generation import Generation
from tests.test_families import load

PROMPTS = ["Tell me about the sea.", "Hi", "Once upon a time there was a very long prompt " * 6,
           "What is the capital of France?", "x", "Write a poem about dragons and castles."]


def alone(handler, ids, params, max_tokens):
    gen = Generation(handler, ids, params, max_tokens)
    text = "".join(gen)
    return text, list(gen.token_ids), gen.finish_reason


@pytest.mark.parametrize("model_id", [TINY_CHATML, TINY_LLAMA3, TINY_MISTRAL, pytest.param(SMOL, marks=pytest.mark.slow)])
def test_batched_greedy_equals_unbatched(tiny_models, model_id):
    # fp32: exact. In bf16 the matmul kernels round differently for different batch shapes, so a
    # greedy continuation may flip at a near-tie (as in vLLM); the README says so.
    h = load(tiny_models, model_id, dtype="float32")
    greedy = SamplingParams(temperature=0)
    requests = [(h.encode_chat([Message(role="user", content=p)]), 6 + 5 * i) for i, p in enumerate(PROMPTS)]
    expected = [alone(h, ids, greedy, n) for ids, n in requests]

    engine = Engine(h, max_batch=8)
    seqs = [engine.add(f"r{i}", ids, greedy, n) for i, (ids, n) in enumerate(requests[:3])]
    outputs = []
    for _ in range(3):  # the rest join a batch that is already decoding
        outputs += engine.step()
    seqs += [engine.add(f"r{i}", ids, greedy, n) for i, (ids, n) in enumerate(requests[3:], start=3)]
    outputs += run_to_completion(engine)
    streamed: dict[str, str] = {s.id: "" for s in seqs}
    for out in outputs:
        streamed[out.seq.id] += out.delta
    for seq, (text, token_ids, reason) in zip(seqs, expected):
        assert seq.token_ids == token_ids, seq.id
        assert seq.text == text == streamed[seq.id]
        assert seq.finish_reason == reason
    assert engine.running == [] and engine.kv_tokens == 0


def test_stops_and_sampling_are_per_row(tiny_models):
    h = load(tiny_models, TINY_CHATML)
    ids = h.encode_chat([Message(role="user", content="Tell me about the sea.")])
    base, _, _ = alone(h, ids, SamplingParams(temperature=0), 30)
    stop = base[10:13]
    engine = Engine(h, max_batch=4)
    a = engine.add("a", ids, SamplingParams(temperature=0, stop=[stop]), 30)
    b = engine.add("b", ids, SamplingParams(temperature=0), 30)
    c = engine.add("c", ids, SamplingParams(temperature=1.0, seed=3), 30)
    run_to_completion(engine)
    assert a.text == base[: base.index(stop)] and a.finish_reason == "stop"
    assert b.text == base
    assert c.token_ids == alone(h, ids, SamplingParams(temperature=1.0, seed=3), 30)[1]


def test_abort_frees_the_row_at_the_next_step(tiny_models):
    h = load(tiny_models, TINY_CHATML, dtype="float32")
    ids = h.encode_chat([Message(role="user", content="Tell me about the sea.")])
    engine = Engine(h, max_batch=4)
    keep = engine.add("keep", ids, SamplingParams(temperature=0), 40)
    longer = h.encode_chat([Message(role="user", content="Once upon a time there was a very long prompt " * 4)])
    gone = engine.add("gone", longer, SamplingParams(temperature=0), 40)
    engine.step()
    engine.step()
    before = engine.kv_tokens
    assert gone.finish_reason is None and len(engine.running) == 2
    engine.abort("gone")
    outs = engine.step()
    assert gone.finish_reason == "cancelled" and any(o.seq is gone and o.finished for o in outs)
    assert engine.running == [keep] and engine.kv_tokens < before
    # Rows that left do not leave padding behind: the cache is exactly as wide as the longest row.
    assert engine.kv.mask.shape[1] == int(engine.kv.lengths.max())
    run_to_completion(engine)
    assert keep.text == alone(h, ids, SamplingParams(temperature=0), 40)[0]


@pytest.mark.parametrize("slots", [True, False], ids=["slot-cache+fast-decode", "dynamic-cache"])
def test_a_long_prompt_is_prefilled_in_chunks_while_the_batch_decodes(tiny_models, slots):
    """A prompt over ``max_prefill_tokens`` goes through the model a budget per step, the running
    row gets a token between every two chunks, and both get the tokens they get alone (fp32); the
    same prompt again starts from its cached prefix, in fewer chunks."""
    h = load(tiny_models, TINY_LLAMA3, dtype="float32")
    greedy = SamplingParams(temperature=0, ignore_eos=True)
    short = h.encode_chat([Message(role="user", content="Tell me about the sea.")])
    long = h.encode_chat([Message(role="user", content="Once upon a time there was a very long prompt " * 10)])
    budget = len(short) + 1  # the short prompt in one pass, the long one in several
    assert len(long) > 4 * budget
    engine = Engine(h, max_batch=4, max_prefill_tokens=budget, slot_cache=slots, fast=slots)
    a = engine.add("a", short, greedy, 60)
    engine.step()

    arrivals = []

    def first_token(seq, arrive=0):
        """Step until ``seq`` has its first token, a short prompt arriving before each of the first
        ``arrive`` steps: (the chunked prefill it had, the running row's new tokens per step)."""
        chunked, gaps, last = None, [], len(a.token_ids)
        while not seq.token_ids:
            if len(arrivals) < arrive:
                arrivals.append(engine.add(f"c{len(arrivals)}", short, greedy, 3))
            engine.step()
            chunked = chunked or engine.chunked
            gaps.append(len(a.token_ids) - last)
            last = len(a.token_ids)
        return chunked, gaps

    b = engine.add("b", long, greedy, 6)
    chunked, gaps = first_token(b, arrive=3)
    assert chunked is not None and chunked.seq is b and chunked.cached == 0
    assert chunked.steps == -(-len(long) // budget) >= 4  # a budget per chunk, not one pass
    # The stream kept its pace, arrivals or not: a token in every two steps.
    assert all(sum(gaps[i:i + 2]) >= 1 for i in range(len(gaps) - 1)), gaps
    assert b in engine.running and not a.finished
    while not all(c.token_ids for c in arrivals):  # without a mixed pass they waited for the chunks
        engine.step()
    hits = engine.prefix_cache.hits
    again = engine.add("again", long, greedy, 6)
    _, gaps = first_token(again)
    assert engine.prefix_cache.hits == hits + 1 and len(gaps) < chunked.steps  # from its cached prefix
    run_to_completion(engine)
    assert a.token_ids == alone(h, short, greedy, 60)[1]
    assert b.token_ids == again.token_ids == alone(h, long, greedy, 6)[1]
    assert len(arrivals) == 3 and all(c.token_ids == alone(h, short, greedy, 3)[1] for c in arrivals)


def test_a_short_prompt_passes_a_long_one_that_waits_for_the_prompt_being_chunked(tiny_models):
    """One prompt is prefilled in chunks at a time; a second long prompt waits for it, but a short
    one queued behind the second starts at the next step (fp32: all get their tokens alone)."""
    h = load(tiny_models, TINY_LLAMA3, dtype="float32")
    greedy = SamplingParams(temperature=0, ignore_eos=True)
    short = h.encode_chat([Message(role="user", content="Tell me about the sea.")])
    long = h.encode_chat([Message(role="user", content="Once upon a time there was a very long prompt " * 10)])
    other = h.encode_chat([Message(role="user", content="A different and also rather long prompt " * 10)])
    engine = Engine(h, max_batch=4, max_prefill_tokens=len(short) + 1)
    b = engine.add("b", long, greedy, 4)
    engine.step()
    assert engine.chunked is not None and engine.chunked.seq is b
    d = engine.add("d", other, greedy, 4)
    c = engine.add("c", short, greedy, 4)
    while not c.token_ids:
        engine.step()
    assert engine.chunked is not None and engine.chunked.seq is b and not d.token_ids
    run_to_completion(engine)
    assert [s.token_ids for s in (b, c, d)] == [alone(h, ids, greedy, 4)[1] for ids in (long, short, other)]


def test_a_prompt_cancelled_while_prefilled_in_chunks_ends_at_the_next_step(tiny_models):
    h = load(tiny_models, TINY_LLAMA3, dtype="float32")
    long = h.encode_chat([Message(role="user", content="Once upon a time there was a very long prompt " * 8)])
    engine = Engine(h, max_batch=4, max_prefill_tokens=16, prefix_cache_tokens=0)
    b = engine.add("b", long, SamplingParams(temperature=0), 6)
    engine.step()
    engine.step()
    assert engine.chunked is not None and engine.chunked.seq is b and engine.chunked.done == 32
    engine.abort("b")
    outs = engine.step()
    assert b.finish_reason == "cancelled" and [o.seq for o in outs if o.finished] == [b]
    assert engine.chunked is None and not engine.has_work() and b.token_ids == []


def test_batch_size_and_token_budget_bound_admission(tiny_models):
    h = load(tiny_models, TINY_CHATML)
    ids = h.encode_chat([Message(role="user", content="Tell me about the sea.")])
    engine = Engine(h, max_batch=2, max_batch_tokens=len(ids) * 2 + 1)
    for i in range(4):
        engine.add(f"s{i}", ids, SamplingParams(temperature=0), 50)
    engine.step()
    assert len(engine.running) == 2 and len(engine.waiting) == 2
    tight = Engine(h, max_batch=8, max_batch_tokens=len(ids) + 1)
    for i in range(3):
        tight.add(f"t{i}", ids, SamplingParams(temperature=0), 5)
    tight.step()
    assert len(tight.running) == 1  # a lone request is admitted even when it alone fills the budget
    run_to_completion(tight)
    assert not tight.waiting


def test_prefix_cache_hits_give_the_same_tokens(tiny_models):
    h = load(tiny_models, TINY_CHATML, dtype="float32")
    system = Message(role="system", content="You are a helpful assistant who answers briefly and kindly. " * 3)
    convs = [[system, Message(role="user", content=p)] for p in PROMPTS[:4]]
    ids = [h.encode_chat(c) for c in convs]
    greedy = SamplingParams(temperature=0)
    cold = Engine(h, max_batch=8, prefix_cache_tokens=0)
    expected = [cold.add(str(i), x, greedy, 12) for i, x in enumerate(ids)]
    run_to_completion(cold)
    warm = Engine(h, max_batch=8)
    first = warm.add("first", ids[0], greedy, 12)
    run_to_completion(warm)  # its prefix is now cached
    seqs = [warm.add(str(i), x, greedy, 12) for i, x in enumerate(ids)]
    run_to_completion(warm)
    assert warm.prefix_cache.hits >= len(ids) and warm.prefix_cache.hit_tokens >= 16 * len(ids)
    assert first.token_ids == expected[0].token_ids
    for seq, want in zip(seqs, expected):
        assert seq.token_ids == want.token_ids and seq.text == want.text


def test_prefix_cache_is_bounded_and_verified():
    import torch

    from handlers.prefix_cache import PrefixCache

    def kv(n):
        return [(torch.arange(n, dtype=torch.float32).view(1, 1, n, 1), torch.zeros(1, 1, n, 1))]

    cache = PrefixCache(block=4, max_tokens=12)
    a = list(range(10))            # usable prefix: 8 tokens
    b = list(range(4)) + [99] * 6  # shares the first block with a
    cache.store(a, kv(10))
    n, got = cache.lookup(a + [5])
    assert n == 8 and got[0][0].flatten().tolist() == list(range(8))
    assert cache.lookup(b)[0] == 4  # only the shared block
    cache.store(b, kv(10))          # 8 + 8 > 12 tokens: the older prompt goes
    assert cache.lookup(a + [5])[0] == 4 and cache._tokens <= 12
    assert cache.lookup([7, 7, 7, 7, 7])[0] == 0


def test_sequence_status_follows_the_engine(tiny_models):
    h = load(tiny_models, TINY_CHATML)
    ids = h.encode_chat([Message(role="user", content="Hi")])
    engine = Engine(h, max_batch=1)
    first = engine.add("first", ids, SamplingParams(temperature=0, ignore_eos=True), 3)
    second = engine.add("second", ids, SamplingParams(temperature=0), 3)
    assert first.status is second.status is SeqStatus.WAITING
    engine.step()
    assert first.status is SeqStatus.RUNNING and second.status is SeqStatus.WAITING
    engine.abort("second")
    run_to_completion(engine)
    assert first.status is second.status is SeqStatus.FINISHED
    assert (first.finish_reason, second.finish_reason) == ("length", "cancelled") and not second.token_ids


def test_waiting_sequences_are_admitted_by_priority_then_arrival(tiny_models):
    h = load(tiny_models, TINY_CHATML)
    ids = h.encode_chat([Message(role="user", content="Hi")])
    engine = Engine(h, max_batch=1)
    for seq_id, priority in (("b1", 1), ("i1", 0), ("x1", 2), ("i2", 0), ("b2", 1)):
        engine.add(seq_id, ids, SamplingParams(temperature=0, ignore_eos=True), 2, priority=priority)
    order = ["i1", "i2", "b1", "b2", "x1"]
    assert [s.id for s in engine.waiting] == order
    admitted = []
    while engine.has_work():
        engine.step()
        admitted += [s.id for s in engine.running if s.id not in admitted]
    assert admitted == order


def _four_rows_one_reserved(tiny_models):
    h = load(tiny_models, TINY_CHATML)
    ids = h.encode_chat([Message(role="user", content="Tell me about the sea.")])
    return h, ids, SamplingParams(temperature=0, ignore_eos=True), Engine(h, max_batch=4, reserved_slots=1)


def _rows(engine):
    return sorted(s.id[0] for s in engine.running)  # "i" interactive, "b" background


def test_reserved_slots_keep_a_row_for_interactive(tiny_models):
    h, ids, params, engine = _four_rows_one_reserved(tiny_models)
    for i in range(6):
        engine.add(f"b{i}", ids, params, 30, priority=1)
    engine.step()  # prefill: background work may hold 4 - 1 rows
    assert _rows(engine) == ["b"] * 3 and len(engine.waiting) == 3
    engine.step()  # a decode; the free row stays free
    assert _rows(engine) == ["b"] * 3
    engine.add("i0", ids, params, 30, priority=0)
    engine.step()  # the next prefill: the interactive sequence gets the reserved row at once
    assert _rows(engine) == ["b", "b", "b", "i"] and [s.id for s in engine.waiting] == ["b3", "b4", "b5"]


def test_reserved_slots_leave_rows_to_bulk_work(tiny_models):
    h, ids, params, engine = _four_rows_one_reserved(tiny_models)
    for i in range(6):
        engine.add(f"i{i}", ids, params, 30, priority=0)
    engine.add("b0", ids, params, 30, priority=2)
    engine.add("b1", ids, params, 30, priority=1)
    engine.step()  # interactive work holds at most 3 rows; the fourth goes to bulk work, priority 1 before 2
    assert _rows(engine) == ["b", "i", "i", "i"] and "b1" in [s.id for s in engine.running]
    assert [s.id for s in engine.waiting] == ["i3", "i4", "i5", "b0"]
    for _ in range(2):
        engine.step()
    engine.abort("b1")
    engine.step()  # b1's row is free and b0 waits: interactive work still holds 3 rows, b0 gets the row
    assert _rows(engine) == ["b", "i", "i", "i"] and "b0" in [s.id for s in engine.running]
    without = Engine(h, max_batch=4)  # reserved_slots=0: strict priority order, as before
    for seq in [*engine.running, *engine.waiting]:
        without.add(seq.id, ids, params, 30, priority=seq.priority)
    without.step()
    assert _rows(without) == ["i"] * 4
    with pytest.raises(ValueError, match="reserved_slots"):
        Engine(h, max_batch=4, reserved_slots=4)


def test_interactive_work_takes_every_row_while_no_bulk_work_waits(tiny_models):
    h, ids, params, engine = _four_rows_one_reserved(tiny_models)
    for i in range(5):
        engine.add(f"i{i}", ids, params, 30, priority=0)
    engine.step()
    assert _rows(engine) == ["i"] * 4 and [s.id for s in engine.waiting] == ["i4"]
    engine.add("b0", ids, params, 30, priority=1)
    engine.step()  # a decode
    engine.abort("i0")
    engine.step()  # the freed row: bulk work waits, so interactive work is back to its 3 rows
    assert _rows(engine) == ["b", "i", "i", "i"] and [s.id for s in engine.waiting] == ["i4"]


def test_many_constrained_rows_are_masked_together_with_the_same_tokens(tiny_models, monkeypatch):
    import handlers.constraints
    from handlers.sampler import MASK_BATCH_FROM

    batched_rows: list[int] = []
    mask_batch = handlers.constraints.mask_batch
    monkeypatch.setattr(handlers.constraints, "mask_batch",
                        lambda logits, matchers: batched_rows.append(len(matchers)) or mask_batch(logits, matchers))
    h = load(tiny_models, TINY_CHATML, dtype="float32")
    grammar = h.compile_constraint({"type": "json_object"})
    greedy = SamplingParams(temperature=0, constraint={"type": "json_object"})
    prompts = [h.encode_chat([Message(role="user", content=p)]) for p in PROMPTS]
    prompts = (prompts * 2)[:MASK_BATCH_FROM + 1]
    engine = Engine(h, max_batch=len(prompts))
    seqs = [engine.add(f"j{i}", ids, greedy, 12, grammar) for i, ids in enumerate(prompts)]
    run_to_completion(engine)  # one batch: mask_batch
    assert batched_rows and max(batched_rows) == len(prompts)
    batched_rows.clear()
    for seq, ids in zip(seqs, prompts):
        single = Engine(h, max_batch=1)  # one row: Matcher.mask_logits
        want = single.add("one", ids, greedy, 12, grammar)
        run_to_completion(single)
        assert seq.token_ids == want.token_ids and seq.finish_reason == want.finish_reason
    assert not batched_rows
