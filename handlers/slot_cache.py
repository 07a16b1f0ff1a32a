"""The running batch's KV cache in preallocated buffers written in place: one row per running
sequence, left-padded like :class:`~handlers.batch_cache.BatchCache`, without its copies.

transformers' ``DynamicCache`` concatenates every layer's keys and values on every decode step: at 32
SmolLM2 rows that copy was a third of the step (46 of ~130 ms, ``torch.profiler``). Here each layer
owns ``[rows, kv_heads, columns, head_dim]`` buffers with spare columns on the right; a decode writes
its one new column in place, and the model attends over a view of the live window ``[start, end)``.
The model sees an ordinary transformers ``Cache`` (:class:`_SlotLayer` per layer), so the model's own
attention, rotary embedding and mask code run unchanged.

* A decode writes column ``end`` of every row and moves ``end`` on by one.
* Rows leave by moving the last rows into their places (only the rows that move are copied; the
  scheduler's order follows, :meth:`filter` returns it); columns that became padding in every row
  are dropped by moving ``start``, no copy.
* Rows join right-aligned at ``end`` from their prefill's cache; a prompt longer than the window
  moves ``start`` left into free columns, or the buffers are rebuilt with room.
* When the spare columns run out the buffers are rebuilt: the window moved to the left edge and
  ``HEADROOM`` more columns (one copy every ``HEADROOM`` steps at worst, instead of one per step).

Memory follows the batch: buffers are sized to the rows and columns in use plus the headroom, sized
down to the rows in use at each rebuild, and dropped when the batch empties, except buffers of at
most ``SPARE_BYTES``, kept for the next batch that fits them: a fresh batch then allocates nothing
(new buffers cost page faults and zero-fill on every request of a quiet server, 8–30 ms for one
short SmolLM2 row on 2 AVX2 cores), only its mask is zeroed; buffers holding a non-finite value are
never kept. Invariant: the mask
buffer is zero outside the live rows' windows, and the KV buffers hold finite values everywhere
(zeros or old rows' keys), so masked columns never carry NaN into attention.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .batch_cache import BatchCache
from .prefix_cache import KV, PrefixCache

Shape = tuple[int, int, torch.dtype]  # one buffer's (heads, head_dim, dtype)
Shapes = tuple[Shape, Shape]  # a layer's keys' and values'

HEADROOM = 64  # spare columns (and the step of growth): a rebuild at most every HEADROOM decode steps
ROW_STEP = 8  # rows are allocated in multiples of this
SPARE_BYTES = 64 << 20  # buffers up to this size are kept for the next batch when the batch empties


class _SlotLayer(DynamicLayer):
    """One layer's view of the slot buffers, as transformers' attention expects a cache layer."""

    def __init__(self, owner: "SlotCache", index: int) -> None:
        super().__init__()
        # A proxy: the owner holds these layers, and a strong reference back would make a cycle that
        # keeps the buffers until a full garbage collection after the engine is dropped.
        self.owner, self.index = weakref.proxy(owner), index
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.owner.write(self.index, key_states, value_states)

    def get_seq_length(self) -> int:
        return self.owner.width

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("rows of a SlotCache move with SlotCache.filter")

    @property
    def keys(self) -> torch.Tensor | None:  # what the window holds now (prefix capture, debugging)
        return self.owner.window(self.index)[0] if self.owner.rows else None

    @keys.setter
    def keys(self, value: Any) -> None:
        pass  # DynamicLayer.__init__ assigns None; the buffers are the owner's

    @property
    def values(self) -> torch.Tensor | None:
        return self.owner.window(self.index)[1] if self.owner.rows else None

    @values.setter
    def values(self, value: Any) -> None:
        pass


class SlotCache(BatchCache):
    """:class:`BatchCache`'s interface (prefill inputs, prefixes, join/filter/advance) over slot buffers."""

    def __init__(self, device: torch.device, pad_id: int, model_config: Any,
                 prefix_cache: PrefixCache | None = None) -> None:
        super().__init__(device, pad_id, model_config, prefix_cache)
        self.k: list[torch.Tensor] = []  # per layer [row capacity, heads, column capacity, head_dim]
        self.v: list[torch.Tensor] = []
        self.mask_buf: torch.Tensor | None = None  # [row capacity, column capacity]
        self.rows = self.start = self.end = 0
        # Rows and columns of the buffers that any write reached since they were made: only there
        # can a non-finite value be (the rest is zeros), so only there is it looked for.
        self.dirty = (0, 0)
        self._spare: tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, tuple[int, int]] | None = None

    @staticmethod
    def supports(model_config: Any) -> bool:
        """Only models whose cache layers are all plain full-attention layers (no sliding window, no
        linear-attention state) can keep them in slots."""
        from transformers import DynamicCache

        try:
            layers = DynamicCache(config=model_config).layers
        except Exception:  # noqa: BLE001 - a config transformers cannot build a cache from: the plain path
            return False
        return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)

    @property
    def mask(self) -> torch.Tensor | None:
        """The live rows' attention mask over the window (a view of the mask buffer)."""
        if self.mask_buf is None or not self.rows:
            return None
        return self.mask_buf[:self.rows, self.start:self.end]

    @mask.setter
    def mask(self, value: Any) -> None:
        pass  # BatchCache assigns it; here the mask buffer is the state

    @property
    def width(self) -> int:
        return self.end - self.start

    def window(self, layer: int, extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of ``layer``'s live keys and values, with ``extra`` columns past ``end``."""
        cols = slice(self.start, self.end + extra)
        return self.k[layer][:self.rows, :, cols], self.v[layer][:self.rows, :, cols]

    def clear(self) -> None:
        """Drop every buffer, the spare ones too (the model is being unloaded)."""
        self._empty()
        self._spare = None

    def _empty(self) -> None:
        """The batch emptied: no rows; small buffers are kept as the spare for the next batch."""
        super().clear()
        if self.mask_buf is not None:
            bufs = (*self.k, *self.v)
            # Kept only when small and finite: a masked column's NaN would still reach attention
            # (0 × NaN), so keys a bad row left behind must never meet another batch.
            small = sum(t.numel() * t.element_size() for t in bufs) <= SPARE_BYTES
            keep = small and _finite([t[:self.dirty[0], :, :self.dirty[1]] for t in bufs])
            self._spare = (self.k, self.v, self.mask_buf, self.dirty) if keep else None
        self.k, self.v, self.mask_buf = [], [], None
        self.rows = self.start = self.end = 0
        self.dirty = (0, 0)

    def _take_spare(self, rows: int, cols: int, shapes: list[Shapes]) -> bool:
        """Use the spare buffers for a fresh batch of ``rows`` × ``cols`` when they fit and match."""
        spare, self._spare = self._spare, None
        if spare is None:
            return False
        k, v, mask, dirty = spare
        fits = (mask.shape[0] >= rows and mask.shape[1] >= cols and len(k) == len(shapes)
                and all((_shape(a), _shape(b)) == layer for a, b, layer in zip(k, v, shapes)))
        if fits:
            self.k, self.v, self.mask_buf = k, v, mask.zero_()  # old keys are finite: the mask hides them
            self.dirty = dirty
        return fits

    # --- the decode --------------------------------------------------------------------------------

    def decode_inputs(self) -> dict[str, Any]:
        assert self.mask_buf is not None and self.lengths is not None and self.pending is not None
        if self.end >= self.mask_buf.shape[1]:  # out of columns: rebuilt, with rows for the batch as it is now
            self._rebuild(_round_up(self.rows, ROW_STEP), self.width + HEADROOM, 0)
        self.mask_buf[:self.rows, self.end] = 1  # the column this step writes
        mask = self.mask_buf[:self.rows, self.start:self.end + 1]
        return {"input_ids": self.pending[:, None], "attention_mask": mask,
                "position_ids": self.lengths[:, None], "cache": self.cache}

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A forward's new keys/values for ``layer`` (one column per step) go in at ``end``; the
        model attends over the window including them."""
        n = keys.shape[2]
        if not layer:
            self.wrote(self.rows, self.end + n)
        self.k[layer][:self.rows, :, self.end:self.end + n] = keys
        self.v[layer][:self.rows, :, self.end:self.end + n] = values
        return self.window(layer, n)

    def advance(self, cache: Any, mask: torch.Tensor, tokens: torch.Tensor) -> None:
        assert self.lengths is not None
        self.end += 1
        self.lengths, self.pending = self.lengths + 1, tokens

    # --- rows joining and leaving ------------------------------------------------------------------

    def join(self, cache: Any, mask: torch.Tensor, tokens: torch.Tensor, rows: list[int]) -> None:
        lengths = mask.sum(-1)
        if len(rows) < mask.shape[0]:
            idx = torch.tensor(rows, device=self.device)
            mask, lengths, tokens = mask[idx], lengths[idx], tokens[idx]
        else:
            idx = None
        new, cols = mask.shape[0], mask.shape[1]
        if not self.rows:
            self._empty()
            self._rebuild(_round_up(new, ROW_STEP), cols + HEADROOM, 0, like=cache)
            self.start = self.end = cols
            self.lengths, self.pending = lengths, tokens
        else:
            assert self.lengths is not None and self.pending is not None
            self.lengths, self.pending = torch.cat([self.lengths, lengths]), torch.cat([self.pending, tokens])
        self._make_room(self.rows + new, cols)
        assert self.mask_buf is not None
        at, r0 = slice(self.end - cols, self.end), self.rows
        for i, layer in enumerate(cache.layers):
            keys, values = (layer.keys, layer.values) if idx is None else (layer.keys[idx], layer.values[idx])
            self.k[i][r0:r0 + new, :, at] = keys
            self.v[i][r0:r0 + new, :, at] = values
        self.mask_buf[r0:r0 + new, at] = mask
        self.rows += new
        self.wrote(self.rows, self.end)
        self.start = min(self.start, self.end - cols)

    def admit(self, lengths: list[int], prefixes: list[KV | None], shapes: list[Shapes]) -> list[tuple[int, int]]:
        """Places for rows that join in this step's pass (:class:`handlers.fast_decode.Joining`):
        (row, first column) for each prompt of ``lengths`` tokens, right-aligned to end at column
        ``end``, the column this step writes. Each cached prefix (``prefixes``) is copied in now;
        the rest of its keys and values are written by the pass. Its mask covers its columns before
        ``end`` (``decode_inputs`` opens ``end`` for every row); its length counts all but its last
        token and its pending token is a placeholder, until ``advance``. ``shapes``: the buffers'
        (heads, head_dim, dtype) per layer for keys and values, used when the batch is empty."""
        new, longest = len(lengths), max(lengths)
        if not self.rows:
            self._empty()
            self._rebuild(_round_up(new, ROW_STEP), longest + HEADROOM, 0, shapes=shapes)
            self.start = self.end = longest - 1
            self.lengths = self.pending = torch.zeros(0, dtype=torch.long, device=self.device)
        else:
            # Rebuilt here, before the new rows are placed, also when no column is left at ``end``:
            # a rebuild in decode_inputs would move the window under the places returned.
            assert self.mask_buf is not None
            cap_rows, cap_cols = self.mask_buf.shape
            if self.rows + new > cap_rows or self.end >= cap_cols or self.end < longest - 1:
                left = max(0, longest - 1 - self.width)
                self._rebuild(max(cap_rows, _round_up(self.rows + new, ROW_STEP)), left + self.width + HEADROOM, left)
        assert self.mask_buf is not None and self.lengths is not None and self.pending is not None
        places = []
        for g, (n, prefix) in enumerate(zip(lengths, prefixes)):
            row, first = self.rows + g, self.end + 1 - n
            self.mask_buf[row, first:self.end] = 1
            for i, (keys, values) in enumerate(prefix or ()):
                cached = keys.shape[2]
                self.k[i][row, :, first:first + cached] = keys[0]
                self.v[i][row, :, first:first + cached] = values[0]
            places.append((row, first))
        self.lengths = torch.cat([self.lengths, torch.tensor([n - 1 for n in lengths], device=self.device)])
        self.pending = torch.cat([self.pending, torch.zeros(new, dtype=self.pending.dtype, device=self.device)])
        self.rows += new
        self.wrote(self.rows, self.end)  # the prefixes copied in end before ``end``
        self.start = min(self.start, self.end + 1 - longest)
        return places

    def remember_joined(self, prompts: list[list[int]], places: list[tuple[int, int]]) -> None:
        """After the pass that prefilled them: keep each joined prompt's block-aligned prefix."""
        if self.prefix_cache is None:
            return
        for ids, (row, first) in zip(prompts, places):
            want = self.prefix_cache.usable_length(len(ids))
            if want > 0:
                cols = slice(first, first + want)
                self.prefix_cache.store(ids, [(k[row:row + 1, :, cols], v[row:row + 1, :, cols])
                                              for k, v in zip(self.k, self.v)])

    def wrote(self, rows: int, cols: int) -> None:
        """Writes reached rows below ``rows`` and columns below ``cols`` (the fast decoder writes
        the buffers itself and says so here)."""
        self.dirty = (max(self.dirty[0], rows), max(self.dirty[1], cols))

    def _make_room(self, rows: int, cols: int) -> None:
        """Row capacity for ``rows`` and at least ``cols`` columns left of ``end``."""
        assert self.mask_buf is not None
        cap_rows = self.mask_buf.shape[0]
        if rows > cap_rows or cols > self.end:
            left = max(0, cols - self.width)
            self._rebuild(max(cap_rows, _round_up(rows, ROW_STEP)), left + self.width + HEADROOM, left)

    def filter(self, keep: list[int]) -> list[int]:
        """Keep rows ``keep``: the last kept rows move into the places of the rows that leave.
        Returns the new order (old row index per new row) for the scheduler."""
        if not keep:
            self._empty()
            return []
        assert self.mask_buf is not None and self.lengths is not None and self.pending is not None
        n, kept = len(keep), set(keep)
        holes = [i for i in range(n) if i not in kept]
        movers = [i for i in keep if i >= n][:len(holes)]
        order = list(range(n))
        if holes:
            for h, s in zip(holes, movers):
                order[h] = s
            dst, src = torch.tensor(holes, device=self.device), torch.tensor(movers, device=self.device)
            cols = slice(self.start, self.end)
            for buf in (*self.k, *self.v):
                buf[dst, :, cols] = buf[src, :, cols]
            self.mask_buf[dst] = self.mask_buf[src]
        self.mask_buf[n:self.rows] = 0
        sel = torch.tensor(order, device=self.device)
        self.lengths, self.pending = self.lengths[sel], self.pending[sel]
        self.rows = n
        used = self.mask_buf[:n, self.start:self.end].any(dim=0).nonzero()
        self.start += int(used[0]) if len(used) else self.width
        return order

    # --- buffers -----------------------------------------------------------------------------------

    def _rebuild(self, rows: int, cols: int, left: int, like: Any = None, shapes: list[Shapes] | None = None) -> None:
        """New buffers of ``rows`` × ``cols``; the live window is copied to start at column ``left``.
        One buffer at a time: the old one is dropped as its copy is made, so the peak is the cache
        plus one layer's buffer, not two caches. The buffers' shapes are those of ``like``'s layers
        (a prefill's cache) or ``shapes``, else the current ones."""
        if like is not None:  # keys and values may differ in shape (heads, head_dim) and dtype
            shapes = [(_shape(layer.keys), _shape(layer.values)) for layer in like.layers]
        if shapes is not None:
            self.k, self.v = [torch.empty(0)] * len(shapes), [torch.empty(0)] * len(shapes)
        else:
            shapes = [(_shape(k), _shape(v)) for k, v in zip(self.k, self.v)]
        width, src, live = self.width, slice(self.start, self.end), self.rows
        if not live and self._take_spare(rows, cols, shapes):
            self.start = self.end = left
            self._ensure_layers()
            return
        dst = slice(left, left + width)
        for bufs, which in ((self.k, 0), (self.v, 1)):
            for i, layer_shapes in enumerate(shapes):
                heads, dim, dtype = layer_shapes[which]
                new = torch.zeros((rows, heads, cols, dim), dtype=dtype, device=self.device)
                if live:
                    new[:live, :, dst] = bufs[i][:live, :, src]
                bufs[i] = new
        mask = torch.zeros((rows, cols), dtype=torch.long, device=self.device)
        if live:
            assert self.mask_buf is not None
            mask[:live, dst] = self.mask_buf[:live, src]
        self.mask_buf = mask
        self.start, self.end = left, left + width
        self.dirty = (live, self.end)  # new buffers: zeros, and the window copied in
        self._ensure_layers()

    def _ensure_layers(self) -> None:
        if self.cache is None or len(self.cache.layers) != len(self.k):
            self.cache = Cache(layers=[_SlotLayer(self, i) for i in range(len(self.k))])


def _finite(bufs: list[torch.Tensor]) -> bool:
    """Whether every value of ``bufs`` is finite, in one pass and one host sync: a NaN or an
    infinity makes its tensor's norm non-finite (so may a norm that overflows: then a finite buffer
    is taken for a bad one, the safe way round)."""
    bufs = [t for t in bufs if t.numel()]
    # fp16's range is small: its norms in fp32. (On CPU a dtype means a float32 copy of each buffer;
    # bf16 has float32's range and its CPU norm accumulates in float anyway.)
    wide = torch.float32 if any(t.dtype == torch.float16 for t in bufs) else None
    return not bufs or bool(torch.stack(torch._foreach_norm(bufs, dtype=wide)).isfinite().all())


def _shape(t: torch.Tensor) -> Shape:
    """(heads, head_dim, dtype) of a [rows, heads, columns, head_dim] tensor."""
    return t.shape[1], t.shape[3], t.dtype


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step
