"""Reuse of prompt prefixes already computed: chat templates put the same system text and headers
in front of every conversation, and prefilling them again for every request is wasted compute.

Prefixes are kept at block boundaries (``block`` tokens), found through chained block hashes (the
hash of a block includes the hash of the one before, as in vLLM's prefix caching), and verified
token by token on a hit. Storage is bounded in tokens; the least recently used prompt goes first.
Each stored entry is the KV of one prompt's longest block-aligned prefix; every shorter block
boundary of it is served as a view of the same tensors.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [1, heads, tokens, dim]


@dataclass
class _Entry:
    tokens: list[int]
    kv: KV
    hashes: list[int]  # chained hash at each block boundary


def block_hashes(ids: list[int], block: int, limit: int) -> list[int]:
    """Chained hashes of the complete blocks among the first ``limit`` tokens."""
    out, h = [], 0
    for start in range(0, limit - block + 1, block):
        h = hash((h, tuple(ids[start:start + block])))
        out.append(h)
    return out


class PrefixCache:
    def __init__(self, block: int = 16, max_tokens: int = 4096) -> None:
        self.block = block
        self.max_tokens = max_tokens
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # keyed by the entry's last hash
        self._index: dict[int, tuple[int, int]] = {}  # boundary hash → (entry key, prefix length)
        self._tokens = 0
        self.hits = 0
        self.hit_tokens = 0

    def usable_length(self, n_prompt: int) -> int:
        """Longest block-aligned prefix that still leaves one prompt token to compute (its logits
        give the first generated token)."""
        return ((n_prompt - 1) // self.block) * self.block

    def lookup(self, ids: list[int], count: bool = True) -> tuple[int, KV | None]:
        """(length, per-layer KV views) of the longest cached prefix of ``ids``; (0, None) if none.
        ``count=False``: a look that uses nothing (not a hit in the stats)."""
        limit = self.usable_length(len(ids))
        if not self._entries or limit <= 0:
            return 0, None
        for h in reversed(block_hashes(ids, self.block, limit)):
            found = self._index.get(h)
            if found is None:
                continue
            key, length = found
            entry = self._entries[key]
            if entry.tokens[:length] != ids[:length]:
                continue  # a hash collision: never serve someone else's prefix
            if count:
                self._entries.move_to_end(key)
                self.hits += 1
                self.hit_tokens += length
            return length, [(k[:, :, :length], v[:, :, :length]) for k, v in entry.kv]
        return 0, None

    def store(self, ids: list[int], kv: KV) -> None:
        """Keep the KV of ``ids``' usable prefix (``kv`` covers at least that many tokens)."""
        length = self.usable_length(len(ids))
        if length <= 0 or length > self.max_tokens:
            return
        hashes = block_hashes(ids, self.block, length)
        key = hashes[-1]
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        entry = _Entry(ids[:length], [(k[:, :, :length].clone(), v[:, :, :length].clone()) for k, v in kv], hashes)
        self._entries[key] = entry
        for i, h in enumerate(hashes):
            self._index[h] = (key, (i + 1) * self.block)
        self._tokens += length
        while self._tokens > self.max_tokens:
            self._evict()

    def _evict(self) -> None:
        key, entry = self._entries.popitem(last=False)
        self._tokens -= len(entry.tokens)
        for h in entry.hashes:
            if self._index.get(h, (None,))[0] == key:
                del self._index[h]
        # Boundaries this entry shared with a surviving one point at the survivor again.
        for other_key, other in self._entries.items():
            for i, h in enumerate(other.hashes):
                self._index.setdefault(h, (other_key, (i + 1) * self.block))
