"""Choosing the next token from one row of logits, with that sequence's own parameters.

Order (as vLLM and the OpenAI reference describe them): logit bias, repetition penalty (prompt and
output tokens), presence/frequency penalties (output tokens), the structured-output mask, then
temperature, top-k, min-p and top-p, then argmax (temperature 0) or a draw from the sequence's own
seeded generator. Log-probabilities are reported from the model's raw distribution.
"""

from __future__ import annotations

import secrets
from collections import Counter
from typing import Callable, Sequence

import torch

from tasks.contract.payloads import SamplingParams, TokenLogprob


def make_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """A per-sequence RNG: the same seed gives the same tokens; no seed gives a fresh random one."""
    if params.greedy:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(params.seed if params.seed is not None else secrets.randbits(63))
    return gen


def apply_penalties(row: torch.Tensor, params: SamplingParams, prompt_ids: Sequence[int],
                    output_counts: Counter) -> torch.Tensor:
    """``row``: float32 logits of one sequence, modified in place and returned."""
    if params.logit_bias:
        ids = torch.tensor(list(params.logit_bias), device=row.device)
        row.index_add_(0, ids, torch.tensor(list(params.logit_bias.values()), dtype=row.dtype, device=row.device))
    if params.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(prompt_ids) | set(output_counts)), device=row.device)
        vals = row[seen]
        row[seen] = torch.where(vals > 0, vals / params.repetition_penalty, vals * params.repetition_penalty)
    if output_counts and (params.presence_penalty or params.frequency_penalty):
        ids = torch.tensor(list(output_counts), device=row.device)
        counts = torch.tensor(list(output_counts.values()), dtype=row.dtype, device=row.device)
        row.index_add_(0, ids, -(params.presence_penalty + params.frequency_penalty * counts))
    return row


def choose(row: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Greedy or sampled choice from processed float32 logits ``row``."""
    if params.greedy:
        return int(torch.argmax(row).item())
    scores = row / params.temperature
    if params.top_k and params.top_k < scores.shape[0]:
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.min_p or params.top_p < 1.0:
        probs = torch.softmax(scores, dim=-1)
        if params.min_p:
            scores = scores.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
        if params.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True)
            sorted_probs = torch.softmax(sorted_scores, dim=-1)
            # Drop a token when the tokens before it already reach top_p; the first always stays.
            drop = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= params.top_p
            scores = torch.full_like(scores, float("-inf")).scatter(0, order, sorted_scores.masked_fill(drop, float("-inf")))
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())


Describe = Callable[[int], tuple[str, list[int]]]  # token id → (text, exact bytes)


def _entry(lp_row: torch.Tensor, token: int, top: int, describe: Describe) -> TokenLogprob:
    text, raw = describe(token)
    alternatives = []
    if top:
        values, ids = torch.topk(lp_row, top)
        for v, i in zip(values.tolist(), ids.tolist()):
            alt_text, alt_raw = describe(int(i))
            alternatives.append((alt_text, float(v), alt_raw))
    return TokenLogprob(token=text, bytes=raw, logprob=float(lp_row[token]), top=alternatives)


def token_logprob(raw: torch.Tensor, token: int, top: int, describe: Describe) -> TokenLogprob:
    """The chosen token's log-probability and the ``top`` most likely tokens, from raw logits."""
    return _entry(torch.log_softmax(raw.float(), dim=-1), token, top, describe)


def prompt_logprobs(logits: torch.Tensor, ids: Sequence[int], top: int, describe: Describe) -> list[TokenLogprob]:
    """Log-probabilities of a prompt's own tokens from the logits of its prefill ([T, V]); the
    first token has none (nothing came before it)."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    text, raw = describe(ids[0])
    return [TokenLogprob(token=text, bytes=raw, logprob=None)] + [
        _entry(lp[t - 1], ids[t], top, describe) for t in range(1, len(ids))]
