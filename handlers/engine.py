"""Continuous batching on one model: sequences join the running batch at the next step and leave it
when they finish, each with its own sampling parameters, stop conditions and text stream.

A small state machine (after nano-vllm's ``step() = schedule → run → postprocess``):

* ``waiting``: admitted requests not yet prefilled; ``running``: sequences in the batch.
* ``step()`` is either a prefill or a decode. A prefill takes the waiting requests that fit (batch
  size, KV token budget, and a prefill chunk of ``max_prefill_tokens``), runs them as one left-padded
  forward, emits their first tokens at once and merges their KV cache into the running batch. A
  decode advances every running sequence by one token. Prefills come first, but never twice in a
  row while sequences are running, so new arrivals get their first token quickly and running
  streams are never starved by a burst of arrivals.

The batch's KV cache is transformers' ordinary cache, left-padded: on CPU one forward over a padded
batch is several times faster than the paged manager (PERF-NOTES). Joining pads the shorter side on
the left and concatenates along the batch; leaving selects the remaining rows and trims columns that
became padding for every row (TGI's ``CausalLMBatch.concatenate`` / ``filter`` design). The KV rows of
a finished or aborted sequence are dropped at once.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from tasks.contract.payloads import SamplingParams, TokenLogprob

from .prefix_cache import KV, PrefixCache
from .sampling import apply_penalties, choose, make_generator, prompt_logprobs, token_logprob
from .text import IncrementalDecoder, StopMatcher

if TYPE_CHECKING:
    from .base import ChatHandler

log = logging.getLogger(__name__)

_DECODE_CONTEXT = 4  # prompt tokens that give the first generated token its left context


@dataclass
class Sequence:
    id: str
    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    aborted: bool = False
    decoder: IncrementalDecoder | None = None
    stops: StopMatcher | None = None
    generator: torch.Generator | None = None
    matcher: Any = None  # structured output (handlers/constraints.py), None when unconstrained
    output_counts: Counter = field(default_factory=Counter)
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob] | None = None
    priority: int = 0  # 0 interactive, 1 background, 2 batch
    _unsent_logprobs: list[TokenLogprob] = field(default_factory=list)
    _last_logprob: TokenLogprob | None = None

    @property
    def text(self) -> str:
        return self.stops.text if self.stops else ""


@dataclass
class StepOutput:
    seq: Sequence
    delta: str
    finished: bool
    logprobs: list[TokenLogprob] | None = None  # of the tokens behind ``delta``


class Engine:
    def __init__(self, handler: "ChatHandler", max_batch: int = 32, max_batch_tokens: int = 32768,
                 max_prefill_tokens: int = 512, prefix_cache_tokens: int = 4096, reserved_slots: int = 0) -> None:
        self.handler = handler
        self.prefix_cache = PrefixCache(max_tokens=prefix_cache_tokens) if prefix_cache_tokens else None
        self.max_prefill_tokens = max_prefill_tokens
        self._prefilled_last = False
        self.model = handler.model
        self.device = handler.device
        self.max_batch = max(1, max_batch)
        self.max_batch_tokens = max_batch_tokens
        # Interactive rows and bulk rows (priority >= 1) may each hold at most this many rows.
        self.class_cap = self.max_batch - reserved_slots if 0 < reserved_slots < self.max_batch else self.max_batch
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        # Batch state, row i ↔ running[i]: KV cache, attention mask over cache columns, real lengths.
        self._cache = None
        self._mask: torch.Tensor | None = None
        self._lengths: torch.Tensor | None = None
        self._pending: torch.Tensor | None = None  # the last sampled token of each row, not yet fed
        self.last_batch = 0  # rows in the most recent decode forward

    # --- requests ---------------------------------------------------------------------------

    def add(self, seq_id: str, prompt_ids: list[int], params: SamplingParams, max_tokens: int,
            grammar: Any = None, priority: int = 0) -> Sequence:
        seq = Sequence(seq_id, list(prompt_ids), params, max_tokens, priority=priority)
        seq.decoder = IncrementalDecoder(self.handler.decode, seq.prompt_ids[-_DECODE_CONTEXT:])
        seq.stops = StopMatcher(params.stop)
        seq.generator = make_generator(params, self.device)
        seq.matcher = grammar.matcher() if grammar is not None else None
        seq.logprobs = [] if params.logprobs is not None else None
        # Waiting in (priority, arrival) order: after the last waiting sequence of its class or better.
        at = next((i for i, w in enumerate(self.waiting) if w.priority > priority), len(self.waiting))
        self.waiting.insert(at, seq)
        return seq

    def abort(self, seq_id: str) -> None:
        for seq in (*self.waiting, *self.running):
            if seq.id == seq_id:
                seq.aborted = True

    def release(self) -> None:
        """Drop the model, the KV state and the prefix cache (the engine is idle): a reload must not
        hold the old weights while the new ones load."""
        self.model = None
        self.handler = None  # type: ignore[assignment]
        self.prefix_cache = None
        self._cache = self._mask = self._lengths = self._pending = None

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def kv_tokens(self) -> int:
        return int(self._lengths.sum().item()) if self._lengths is not None else 0

    # --- the step ---------------------------------------------------------------------------

    def step(self) -> list[StepOutput]:
        outputs = self._drop_aborted()
        admitted = [] if (self._prefilled_last and self.running) else self._schedule()
        with torch.inference_mode():
            if admitted:
                outputs += self._prefill(admitted)
            elif self.running:
                outputs += self._decode()
        self._prefilled_last = bool(admitted)
        return outputs

    def _schedule(self) -> list[Sequence]:
        """Waiting requests that fit (batch size, KV token budget, prefill chunk), in arrival order."""
        admitted: list[Sequence] = []
        tokens, chunk = self.kv_tokens, 0
        rows = [sum(s.priority == 0 for s in self.running), sum(s.priority > 0 for s in self.running)]
        while self.waiting and len(self.running) + len(admitted) < self.max_batch:
            head = next((s for s in self.waiting if rows[s.priority > 0] < self.class_cap), None)
            if head is None:
                break  # both classes at their share of the batch
            need = len(head.prompt_ids)
            if head.params.prompt_logprobs is not None:
                if not admitted:  # it needs logits at every prompt position: prefilled alone
                    self.waiting.remove(head)
                    admitted.append(head)
                break
            if admitted and chunk + need > self.max_prefill_tokens:
                break  # the rest go in the next prefill
            if (self.running or admitted) and tokens + need > self.max_batch_tokens:
                break  # wait for room; a lone request is always admitted
            self.waiting.remove(head)
            admitted.append(head)
            rows[head.priority > 0] += 1
            tokens += need
            chunk += need
        return admitted

    def _prefill(self, group: list[Sequence]) -> list[StepOutput]:
        """One forward for the group's prompts. A row whose prompt starts with a cached prefix
        computes only the rest: its cache row is [pad | prefix | pad | rest], masked accordingly."""
        echo = group[0].params.prompt_logprobs is not None  # then the group is that one sequence
        prefixes = self.prefix_cache if not echo else None
        hits = [prefixes.lookup(s.prompt_ids) if prefixes is not None else (0, None) for s in group]
        cached = [n for n, _ in hits]
        rest = [s.prompt_ids[n:] for s, (n, _) in zip(group, hits)]
        wp, ws = max(cached), max(len(r) for r in rest)
        pad = self.handler.pad_id
        ids = torch.tensor([[pad] * (ws - len(r)) + r for r in rest], device=self.device)
        mask = torch.tensor([[0] * (wp - n) + [1] * n + [0] * (ws - len(r)) + [1] * len(r)
                             for n, r in zip(cached, rest)], device=self.device)
        positions = torch.tensor([[0] * (ws - len(r)) + list(range(n, n + len(r))) for n, r in zip(cached, rest)],
                                 device=self.device)
        past = self._past_for(hits, wp) if wp else None
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=past, use_cache=True,
                         logits_to_keep=0 if echo else 1)
        if echo:
            seq = group[0]
            seq.prompt_logprobs = prompt_logprobs(out.logits[0], seq.prompt_ids, seq.params.prompt_logprobs or 0,
                                                  self.handler.describe_token)
        if self.prefix_cache is not None:
            self._remember_prefixes(group, out.cache, mask)
        lengths = mask.sum(-1)
        tokens = self._sample(group, out.logits[:, -1])
        outputs, keep = self._postprocess(group, tokens)
        if keep:
            idx = torch.tensor(keep, device=self.device)
            self._join(out.cache, mask, lengths, tokens, idx, [group[i] for i in keep])
        return outputs

    def _past_for(self, hits: list[tuple[int, KV | None]], width: int):
        """A cache holding each row's cached prefix, left-padded to ``width``."""
        from transformers import DynamicCache

        n_layers = len(next(kv for _, kv in hits if kv is not None))
        layers = []
        for layer in range(n_layers):
            keys, values = [], []
            for _, kv in hits:
                if kv is None:
                    ref_k, ref_v = next(kv for _, kv in hits if kv is not None)[layer]
                    shape = (1, ref_k.shape[1], width, ref_k.shape[3])
                    keys.append(torch.zeros(shape, dtype=ref_k.dtype, device=self.device))
                    values.append(torch.zeros(shape, dtype=ref_v.dtype, device=self.device))
                else:
                    keys.append(_left_pad(kv[layer][0], width))
                    values.append(_left_pad(kv[layer][1], width))
            layers.append((torch.cat(keys), torch.cat(values)))
        return DynamicCache(ddp_cache_data=layers, config=self.model.config)

    def _remember_prefixes(self, group: list[Sequence], cache, mask: torch.Tensor) -> None:
        """Store each prompt's block-aligned prefix from this prefill's cache rows."""
        assert self.prefix_cache is not None
        for row, seq in enumerate(group):
            want = self.prefix_cache.usable_length(len(seq.prompt_ids))
            if want <= 0:
                continue
            cols = mask[row].nonzero().flatten()[:want]  # the row's real tokens, in order
            kv = [(layer.keys[row:row + 1].index_select(2, cols), layer.values[row:row + 1].index_select(2, cols))
                  for layer in cache.layers]
            self.prefix_cache.store(seq.prompt_ids, kv)

    def _decode(self) -> list[StepOutput]:
        assert self._mask is not None and self._lengths is not None and self._pending is not None
        self.last_batch = len(self.running)
        ones = torch.ones((len(self.running), 1), dtype=self._mask.dtype, device=self.device)
        mask = torch.cat([self._mask, ones], dim=1)
        out = self.model(input_ids=self._pending[:, None], attention_mask=mask,
                         position_ids=self._lengths[:, None], cache=self._cache, use_cache=True)
        self._cache, self._mask, self._lengths = out.cache, mask, self._lengths + 1
        tokens = self._sample(self.running, out.logits[:, -1])
        outputs, keep = self._postprocess(self.running, tokens)
        self._pending = tokens
        if len(keep) < len(self.running):
            self._filter(keep)
        return outputs

    # --- sampling and text ------------------------------------------------------------------------

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> torch.Tensor:
        """One token per row; rows with plain greedy parameters share one batched argmax."""
        chosen = torch.argmax(logits, dim=-1).tolist()
        for i, seq in enumerate(seqs):
            p = seq.params
            if not (p.greedy and p.plain and seq.matcher is None):
                row = logits[i].float().clone()
                if not p.plain:
                    apply_penalties(row, p, seq.prompt_ids, seq.output_counts)
                if seq.matcher is not None:
                    seq.matcher.mask_logits(row)
                chosen[i] = choose(row, p, seq.generator)
            if p.logprobs is not None:
                seq._last_logprob = token_logprob(logits[i], chosen[i], p.logprobs, self.handler.describe_token)
        return torch.tensor(chosen, device=self.device)

    def _postprocess(self, seqs: list[Sequence], tokens: torch.Tensor) -> tuple[list[StepOutput], list[int]]:
        """Feed each sampled token to its sequence; return outputs and the rows that go on."""
        outputs, keep = [], []
        for i, (seq, token) in enumerate(zip(seqs, tokens.tolist())):
            delta = ""
            p = seq.params
            if token in p.stop_token_ids or (token in self.handler.stop_ids and not p.ignore_eos):
                seq.finish_reason = "stop"
            else:
                seq.token_ids.append(token)
                seq.output_counts[token] += 1
                if seq.matcher is not None:
                    seq.matcher.accept(token)
                if seq.logprobs is not None and seq._last_logprob is not None:
                    seq.logprobs.append(seq._last_logprob)
                    seq._unsent_logprobs.append(seq._last_logprob)
                delta = seq.stops.feed(seq.decoder.push(token))  # type: ignore[union-attr]
                if seq.stops.stopped:  # type: ignore[union-attr]
                    seq.finish_reason = "stop"
                elif len(seq.token_ids) >= seq.max_tokens:
                    seq.finish_reason = "length"
            if seq.finish_reason:
                delta += seq.stops.flush()  # type: ignore[union-attr]
                outputs.append(StepOutput(seq, delta, True, self._take_logprobs(seq)))
            else:
                keep.append(i)
                if delta:
                    outputs.append(StepOutput(seq, delta, False, self._take_logprobs(seq)))
        return outputs, keep

    @staticmethod
    def _take_logprobs(seq: Sequence) -> list[TokenLogprob] | None:
        """The logprobs of the tokens whose text goes out with this delta."""
        if seq.logprobs is None:
            return None
        taken, seq._unsent_logprobs = seq._unsent_logprobs, []
        return taken

    def _drop_aborted(self) -> list[StepOutput]:
        outputs = []
        for seq in [s for s in self.waiting if s.aborted]:
            self.waiting.remove(seq)
            seq.finish_reason = "cancelled"
            outputs.append(StepOutput(seq, "", True))
        keep = [i for i, s in enumerate(self.running) if not s.aborted]
        if len(keep) < len(self.running):
            for seq in self.running:
                if seq.aborted:
                    seq.finish_reason = "cancelled"
                    outputs.append(StepOutput(seq, "", True))
            self._filter(keep)
        return outputs

    # --- KV cache surgery ---------------------------------------------------------------------------

    def _join(self, cache, mask: torch.Tensor, lengths: torch.Tensor, tokens: torch.Tensor, rows: torch.Tensor,
              seqs: list[Sequence]) -> None:
        """Merge freshly prefilled rows into the running batch."""
        if len(rows) < mask.shape[0]:
            cache.batch_select_indices(rows)
            mask, lengths, tokens = mask[rows], lengths[rows], tokens[rows]
        if self._cache is None or not self.running:
            self._cache, self._mask, self._lengths, self._pending = cache, mask, lengths, tokens
            self.running = list(seqs)
            return
        width = max(self._mask.shape[1], mask.shape[1])
        old_layers, new_layers = self._cache.layers, cache.layers
        for old, new in zip(old_layers, new_layers):
            old.keys = torch.cat([_left_pad(old.keys, width), _left_pad(new.keys, width)], dim=0)
            old.values = torch.cat([_left_pad(old.values, width), _left_pad(new.values, width)], dim=0)
        self._mask = torch.cat([_left_pad(self._mask, width), _left_pad(mask, width)], dim=0)
        _sync_layer_lengths(self._cache, width)
        self._lengths = torch.cat([self._lengths, lengths])
        self._pending = torch.cat([self._pending, tokens])
        self.running += seqs

    def _filter(self, keep: list[int]) -> None:
        """Keep only rows ``keep``; trim the columns that are now padding in every row."""
        self.running = [self.running[i] for i in keep]
        if not keep:
            self._cache = self._mask = self._lengths = self._pending = None
            return
        assert self._cache is not None and self._mask is not None and self._lengths is not None and self._pending is not None
        idx = torch.tensor(keep, device=self.device)
        self._cache.batch_select_indices(idx)
        self._mask, self._lengths, self._pending = self._mask[idx], self._lengths[idx], self._pending[idx]
        used = self._mask.any(dim=0)
        if not bool(used.all()):  # columns that are padding in every remaining row
            cols = used.nonzero().flatten()
            self._mask = self._mask[:, cols]
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys.index_select(2, cols), layer.values.index_select(2, cols)
            _sync_layer_lengths(self._cache, self._mask.shape[1])


def _sync_layer_lengths(cache, width: int) -> None:
    """Sliding-window layers count the tokens they have seen; after joining or trimming columns the
    batch has seen ``width`` (padded) positions."""
    for layer in cache.layers:
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = width


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """Pad dim -2 (KV: [B, H, T, D]) or dim -1 (mask: [B, T]) on the left with zeros up to ``width``."""
    dim = -1 if t.dim() == 2 else -2
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=dim)


def run_to_completion(engine: Engine) -> list[StepOutput]:
    """Step until nothing is left (in-process use: tests, benchmarks)."""
    outputs: list[StepOutput] = []
    while engine.has_work():
        outputs += engine.step()
    return outputs
