"""A prompt longer than one step's prefill budget (``max_prefill_tokens``), prefilled over several
steps so that the running streams keep their pace (vLLM's chunked prefill).

Before, such a prompt went through the model in one pass: on 2 CPU cores a 4,000-token prompt is
seconds of compute, and every stream in the batch waited that long for its next token. Here its
tokens go through the model's own forward a budget at a time, into a cache of its own (transformers'
``DynamicCache``, from its cached prefix when the prefix cache has one), and the engine gives the
running batch a step between chunks: a stream's inter-token gap is at most one chunk plus one
decode. After the last chunk the sequence samples its first token and joins the batch like any
prefill (``BatchCache.join`` / ``SlotCache.join``).

Between chunks, short prompts that arrive are prefilled in the batch's own pass (the fast
decoder's mixed step); without the fast decoder a prefill would stall the running rows, so they
decode between chunks and arrivals wait for the last chunk. A prompt whose uncached rest fits the
budget (a long chat with its earlier turns cached) is not chunked.

One prompt is chunked at a time (a second long one waits; shorter prompts behind it pass it); it
holds its row and its tokens in the scheduler's budgets from
the start (:meth:`handlers.scheduler.Scheduler.schedule` ``held``). Only for models whose cache
layers are all full attention (:meth:`handlers.slot_cache.SlotCache.supports`), and never for a
prompt that wants logprobs at every position (echo), which needs one pass.
"""

from __future__ import annotations

from typing import Any

import torch

from .sequence import Sequence


class ChunkedPrefill:
    def __init__(self, seq: Sequence, inputs: dict[str, Any], chunk: int) -> None:
        """``inputs``: ``BatchCache.prefill_inputs`` of the one prompt (its tokens after the cached
        prefix, the mask over prefix + tokens, their positions, the prefix's cache or None)."""
        self.seq = seq
        self.ids, self.mask, self.positions = inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"]
        self.cache = inputs["cache"]
        self.chunk = max(1, chunk)
        self.cached = self.mask.shape[1] - self.ids.shape[1]  # prefix columns already in the cache
        self.done = 0  # tokens after the prefix computed so far
        self.steps = 0

    @property
    def remaining(self) -> int:
        return self.ids.shape[1] - self.done

    def step(self, model: Any) -> torch.Tensor | None:
        """The next chunk through ``model``; after the last one, the logits at the prompt's last
        position ([1, vocab]), else None."""
        stop = self.done + min(self.chunk, self.remaining)
        out = model(input_ids=self.ids[:, self.done:stop], attention_mask=self.mask[:, :self.cached + stop],
                    position_ids=self.positions[:, self.done:stop], cache=self.cache, use_cache=True,
                    logits_to_keep=1)
        self.cache, self.done = out.cache, stop
        self.steps += 1
        return None if self.remaining else out.logits[:, -1]
