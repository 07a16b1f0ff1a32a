"""The running batch's KV cache: transformers' ordinary ``DynamicCache``, left-padded, one row per
running sequence, with the attention mask over its columns, each row's real length and the token
each row sampled last (fed at the next decode).

Rows join after their prefill: the shorter side is padded on the left and the two are concatenated
along the batch. Rows leave as soon as their sequence ends: the remaining rows are selected and the
columns that became padding in every row are trimmed (TGI's ``CausalLMBatch.concatenate`` /
``filter`` design). A prefill can start from prompt prefixes kept in a :class:`PrefixCache`: such a
row is [pad | prefix | pad | rest], masked accordingly, and only the rest is computed.
"""

from __future__ import annotations

from typing import Any

import torch

from .prefix_cache import KV, PrefixCache


class BatchCache:
    def __init__(self, device: torch.device, pad_id: int, model_config: Any,
                 prefix_cache: PrefixCache | None = None) -> None:
        self.device = device
        self.pad_id = pad_id  # filler for left padding; masked out, so any id will do
        self.model_config = model_config
        self.prefix_cache = prefix_cache
        self.cache: Any = None  # DynamicCache, row i ↔ the scheduler's running[i]
        self.mask: torch.Tensor | None = None  # [rows, columns]: 1 where a column holds a real token
        self.lengths: torch.Tensor | None = None  # [rows]: real tokens per row (the next position)
        self.pending: torch.Tensor | None = None  # [rows]: the last sampled token, not yet fed

    @property
    def tokens(self) -> int:
        """Real tokens held, all rows together (the KV budget counts these)."""
        return int(self.lengths.sum().item()) if self.lengths is not None else 0

    def clear(self) -> None:
        self.cache = self.mask = self.lengths = self.pending = None

    # --- model inputs ------------------------------------------------------------------------------

    def prefill_inputs(self, prompts: list[list[int]], use_prefixes: bool = True) -> dict[str, Any]:
        """The forward's inputs for a group of prompts, one left-padded row each, starting from the
        cached prefix of each prompt where there is one."""
        hits: list[tuple[int, KV | None]] = self.prefix_hits(prompts) if use_prefixes else [(0, None)] * len(prompts)
        cached = [n for n, _ in hits]
        rest = [ids[n:] for ids, n in zip(prompts, cached)]
        wp, ws = max(cached), max(len(r) for r in rest)
        ids = torch.tensor([[self.pad_id] * (ws - len(r)) + r for r in rest], device=self.device)
        mask = torch.tensor([[0] * (wp - n) + [1] * n + [0] * (ws - len(r)) + [1] * len(r)
                             for n, r in zip(cached, rest)], device=self.device)
        positions = torch.tensor([[0] * (ws - len(r)) + list(range(n, n + len(r))) for n, r in zip(cached, rest)],
                                 device=self.device)
        past = self._past_for(hits, wp) if wp else None
        return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "cache": past}

    def prefix_hits(self, prompts: list[list[int]]) -> list[tuple[int, KV | None]]:
        """Each prompt's longest cached prefix: (its length, its per-layer KV), (0, None) for none."""
        prefixes = self.prefix_cache
        return [prefixes.lookup(ids) if prefixes is not None else (0, None) for ids in prompts]

    def decode_inputs(self) -> dict[str, Any]:
        """The forward's inputs for one decode step: each row's pending token at its next position."""
        assert self.mask is not None and self.lengths is not None and self.pending is not None
        ones = torch.ones((self.mask.shape[0], 1), dtype=self.mask.dtype, device=self.device)
        return {"input_ids": self.pending[:, None], "attention_mask": torch.cat([self.mask, ones], dim=1),
                "position_ids": self.lengths[:, None], "cache": self.cache}

    def advance(self, cache: Any, mask: torch.Tensor, tokens: torch.Tensor) -> None:
        """After a decode forward over ``decode_inputs``: every row holds one more token and waits to
        feed ``tokens``."""
        assert self.lengths is not None
        self.cache, self.mask, self.lengths, self.pending = cache, mask, self.lengths + 1, tokens

    # --- rows joining and leaving --------------------------------------------------------------------

    def join(self, cache: Any, mask: torch.Tensor, tokens: torch.Tensor, rows: list[int]) -> None:
        """Append rows ``rows`` of a prefill (its cache, attention mask and sampled tokens) to the batch."""
        lengths = mask.sum(-1)
        if len(rows) < mask.shape[0]:
            idx = torch.tensor(rows, device=self.device)
            cache.batch_select_indices(idx)
            mask, lengths, tokens = mask[idx], lengths[idx], tokens[idx]
        if self.cache is None:
            self.cache, self.mask, self.lengths, self.pending = cache, mask, lengths, tokens
            return
        assert self.mask is not None and self.lengths is not None and self.pending is not None
        width = max(self.mask.shape[1], mask.shape[1])
        for old, new in zip(self.cache.layers, cache.layers):
            old.keys = torch.cat([_left_pad(old.keys, width), _left_pad(new.keys, width)], dim=0)
            old.values = torch.cat([_left_pad(old.values, width), _left_pad(new.values, width)], dim=0)
        self.mask = torch.cat([_left_pad(self.mask, width), _left_pad(mask, width)], dim=0)
        _sync_layer_lengths(self.cache, width)
        self.lengths = torch.cat([self.lengths, lengths])
        self.pending = torch.cat([self.pending, tokens])

    def filter(self, keep: list[int]) -> list[int]:
        """Keep only rows ``keep``; trim the columns that are now padding in every row. Returns the
        rows' new order (old index per new row): here ``keep`` itself."""
        if not keep:
            self.clear()
            return keep
        assert self.mask is not None and self.lengths is not None and self.pending is not None
        idx = torch.tensor(keep, device=self.device)
        self.cache.batch_select_indices(idx)
        self.mask, self.lengths, self.pending = self.mask[idx], self.lengths[idx], self.pending[idx]
        used = self.mask.any(dim=0)
        if not bool(used.all()):  # columns that are padding in every remaining row
            cols = used.nonzero().flatten()
            self.mask = self.mask[:, cols]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys.index_select(2, cols), layer.values.index_select(2, cols)
            _sync_layer_lengths(self.cache, self.mask.shape[1])
        return keep

    # --- prompt prefixes -------------------------------------------------------------------------------

    def remember_prefixes(self, prompts: list[list[int]], cache: Any, mask: torch.Tensor) -> None:
        """Store each prompt's block-aligned prefix from the cache rows of its prefill."""
        if self.prefix_cache is None:
            return
        for row, ids in enumerate(prompts):
            want = self.prefix_cache.usable_length(len(ids))
            if want <= 0:
                continue
            cols = mask[row].nonzero().flatten()[:want]  # the row's real tokens, in order
            kv = [(layer.keys[row:row + 1].index_select(2, cols), layer.values[row:row + 1].index_select(2, cols))
                  for layer in cache.layers]
            self.prefix_cache.store(ids, kv)

    def _past_for(self, hits: list[tuple[int, KV | None]], width: int) -> Any:
        """A cache holding each row's cached prefix, left-padded to ``width`` (zeros for rows without)."""
        from transformers import DynamicCache

        ref = next(kv for _, kv in hits if kv is not None)
        layers = []
        for layer, (ref_k, ref_v) in enumerate(ref):
            shape = (1, ref_k.shape[1], width, ref_k.shape[3])
            keys = [_left_pad(kv[layer][0], width) if kv is not None
                    else torch.zeros(shape, dtype=ref_k.dtype, device=self.device) for _, kv in hits]
            values = [_left_pad(kv[layer][1], width) if kv is not None
                      else torch.zeros(shape, dtype=ref_v.dtype, device=self.device) for _, kv in hits]
            layers.append((torch.cat(keys), torch.cat(values)))
        return DynamicCache(ddp_cache_data=layers, config=self.model_config)


def _sync_layer_lengths(cache: Any, width: int) -> None:
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
