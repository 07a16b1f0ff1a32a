"""One decode step of a Llama-architecture model straight from its modules, over the slot cache.

The model's own forward runs ~50 tensor ops and a dozen module calls per layer for one new token
per row, and builds a mask, a cache-position vector and output objects on every step; on 2 CPU
cores that dispatch is serial Python while the matmuls wait. This runs the same math from the same
weights with fewer ops: q/k/v and gate/up as one matmul each where :mod:`handlers.cpu_linear`
fused them, RMSNorm as one ``F.rms_norm`` call, RoPE on q and k together, the new keys/values
written straight into the slot buffers, the running rows' attention over the live window in
whichever way is fastest on this CPU (:func:`decode_attention`: two torch ways, and the C kernel of
:mod:`handlers.cpu_kernels` where it is built, which also does the elementwise work), and only the
rows' last positions through the LM head. Rows joining the batch are prefilled in the same pass (:class:`Joining`): their prompt
tokens go through the matmuls with the running rows' tokens, and only their attention is their
own (vLLM's mixed prefill/decode batches); a prompt that wants logits at every position (echo)
still takes the model's forward.

Only for architectures whose decoder layer is exactly Llama's (``LlamaForCausalLM``,
``Qwen2ForCausalLM``, ``MistralForCausalLM``: pre-norm RMSNorm, attention with optional q/k/v bias
and any RoPE type the model's rotary module computes, SiLU-gated MLP); anything else, or any module
this file does not recognise, keeps the model's forward (:func:`build` returns None). fp32 tests
check it gives the model's forward's tokens.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_kernels import DTYPES, Kernels
from .cpu_linear import FusedMember, PackedLinear
from .slot_cache import SlotCache

log = logging.getLogger(__name__)

ARCHITECTURES = {"LlamaForCausalLM": "Llama", "Qwen2ForCausalLM": "Qwen2", "MistralForCausalLM": "Mistral"}

Linear = Callable[[torch.Tensor], torch.Tensor]
Rope = Callable[[torch.Tensor, int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def build(model: Any, kernels: Kernels | None = None) -> "FastDecoder | None":
    """A decoder for ``model``, or None when its structure is not the one this file knows;
    ``kernels``: fused C kernels for its elementwise work (:mod:`handlers.cpu_kernels`), used
    where they support the model's dtype and device."""
    prefix = ARCHITECTURES.get(type(model).__name__)
    config = getattr(model, "config", None)
    if prefix is None or config is None or getattr(config, "hidden_act", None) != "silu":
        return None
    if getattr(config, "pretraining_tp", 1) != 1 or getattr(model, "logit_scale", None) is not None:
        return None
    if not SlotCache.supports(config):  # sliding-window layers (Mistral's config.sliding_window) and the like
        return None
    layers = model.model.layers
    expected = {"self_attn": f"{prefix}Attention", "mlp": f"{prefix}MLP", "input_layernorm": f"{prefix}RMSNorm",
                "post_attention_layernorm": f"{prefix}RMSNorm"}
    for layer in layers:
        if type(layer).__name__ != f"{prefix}DecoderLayer":
            return None
        if any(type(getattr(layer, name, None)).__name__ != cls for name, cls in expected.items()):
            return None
    if type(model.model.norm).__name__ != f"{prefix}RMSNorm":
        return None
    return FastDecoder(model, kernels)


class _Layer:
    def __init__(self, layer: Any) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.norm1 = (layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
        self.norm2 = (layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon)
        self.qkv = _joined(attn.q_proj, attn.k_proj, attn.v_proj)
        self.o = _linear(attn.o_proj)
        self.gate_up = _joined(mlp.gate_proj, mlp.up_proj)
        self.down = _linear(mlp.down_proj)
        self.scaling = attn.scaling


@dataclass(frozen=True)
class Joining:
    """A row joining the batch in this step (:meth:`SlotCache.admit` made its place): its prompt's
    tokens after the ``cached`` prefix already in the buffers, from column ``first`` of row ``row``."""

    row: int
    first: int
    cached: int
    ids: list[int]


class FastDecoder:
    def __init__(self, model: Any, kernels: Kernels | None = None) -> None:
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.embed = model.model.embed_tokens
        self.rotary = model.model.rotary_emb
        self.norm = (model.model.norm.weight, model.model.norm.variance_epsilon)
        self.lm_head = _linear(model.lm_head)
        self.layers = [_Layer(layer) for layer in model.model.layers]
        # The norm after each layer's MLP: the next layer's input norm, after the last the final one.
        self.next_norms = [layer.norm1 for layer in self.layers[1:]] + [self.norm]
        dtype = self.embed.weight.dtype
        # The C kernels where every tensor they take shares one dtype they have (a model whose norms
        # kept float32 weights beside bf16 activations keeps the torch ops).
        norms = [w for layer in self.layers for w in (layer.norm1[0], layer.norm2[0])] + [self.norm[0]]
        self.kernels = kernels if kernels is not None and kernels.supports([self.embed.weight, *norms]) else None
        self.kv_shapes = [((self.kv_heads, self.head_dim, dtype),) * 2 for _ in self.layers]
        # Chosen on the first step, on the thread that runs the model: timing it here (the loading
        # thread) would start a second OpenMP team in the process, which halved the engine's speed.
        self.attention: DecodeAttention | None = None

    def __call__(self, kv: SlotCache, joining: Sequence[Joining] = ()) -> torch.Tensor:
        """Logits ``[rows, vocab]`` of one step: each running row (the first ``kv.rows -
        len(joining)``, after ``kv.decode_inputs()``) feeds its pending token at column ``kv.end``,
        and each joining row computes its prompt (after its cached prefix), attending causally
        over its own columns. One pass through the layers for all of their tokens: the matmuls see
        every token at once, only attention is per joining row. New keys and values go straight
        into the buffers (``kv.advance`` follows); the logits are those of each row's last token."""
        assert kv.lengths is not None and kv.pending is not None and kv.mask_buf is not None
        running, end, dev = kv.rows - len(joining), kv.end, kv.device
        kv.wrote(kv.rows, end + 1)  # this pass writes column ``end`` of every row, joining rows' columns before it
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        ids, positions, spans = _step_tokens(kv, joining, running)
        tokens = ids.shape[0]
        x = self.embed(ids)  # [tokens, hidden]: the residual stream, added to in place
        cos, sin = self.rotary(x[None], positions[None])  # [1, tokens, head_dim]
        rope = self.rope(cos[0], sin[0])
        if self.attention is None:
            self.attention = decode_attention(x.dtype, heads, kv_heads, dim, self.kernels)
        mask = kv.mask_buf[:running, kv.start:end + 1]
        bias = self.attention.mask(mask)  # once per step, in the form the attention takes
        h = self.add_norm(x, None, *self.layers[0].norm1)
        for i, layer in enumerate(self.layers):
            keys, values = kv.k[i], kv.v[i]
            q, k, v = rope(layer.qkv(h).view(tokens, heads + 2 * kv_heads, dim), running, keys[:, :, end],
                           values[:, :, end])
            outs = []
            if running:
                window = slice(kv.start, end + 1)
                outs.append(self.attention(q[:running], keys[:running, :, window], values[:running, :, window],
                                           bias, layer.scaling))
            for j, (at, n, causal) in zip(joining, spans):
                outs.append(_prompt_attention(j, end, q[at:at + n], k[at:at + n], v[at:at + n], keys, values, causal,
                                              layer.scaling))
            h = self.add_norm(x, layer.o(outs[0] if len(outs) == 1 else torch.cat(outs)), *layer.norm2)
            h = self.add_norm(x, layer.down(self.silu_mul(layer.gate_up(h))), *self.next_norms[i])
        if joining:  # each row's last token
            last = list(range(running)) + [at + n - 1 for at, n, _ in spans]
            h = h[torch.tensor(last, device=dev)]
        return self.lm_head(h)

    def add_norm(self, x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """``x += delta`` in place (the residual stream), then RMSNorm of ``x``."""
        if self.kernels is not None:
            return self.kernels.add_rms_norm(x, delta, weight, eps)
        if delta is not None:
            x.add_(delta)
        return _rms_norm(x, weight, eps)

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """SwiGLU: ``silu(gate) * up`` from the gate/up projection's output [tokens, 2 * intermediate]."""
        if self.kernels is not None:
            return self.kernels.silu_mul(gate_up)
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up

    def rope(self, cos: torch.Tensor, sin: torch.Tensor) -> "Rope":
        """The step's rotary embedding (``cos``, ``sin``: [tokens, head_dim]) as a call on a layer's
        ``qkv`` [tokens, heads + 2 * kv_heads, dim] that rotates q and k, writes the first ``running``
        tokens' keys and values into the cache column given ([rows, kv_heads, dim]) and returns q, k, v."""
        heads, kv_heads = self.heads, self.kv_heads
        if self.kernels is not None:
            kernels, cos, sin = self.kernels, cos.contiguous(), sin.contiguous()

            def fused(qkv: torch.Tensor, running: int, key_col: torch.Tensor,
                      value_col: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
                kernels.rope_store(qkv, heads, kv_heads, cos, sin, running, key_col, value_col)
                return qkv[:, :heads], qkv[:, heads:heads + kv_heads], qkv[:, heads + kv_heads:]
            return fused

        half = self.head_dim // 2
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads in [tokens, heads, dim]
        # rotate_half(x) * sin == roll(x, half) * sin with the first half of sin negated: one op fewer.
        sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)

        def eager(qkv: torch.Tensor, running: int, key_col: torch.Tensor,
                  value_col: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            qk = qkv[:, :heads + kv_heads]
            qk = torch.addcmul(qk * cos, qk.roll(half, dims=-1), sin)
            q, k, v = qk[:, :heads], qk[:, heads:], qkv[:, heads + kv_heads:]
            if running:
                key_col[:running] = k[:running]
                value_col[:running] = v[:running]
            return q, k, v
        return eager


def _step_tokens(kv: SlotCache, joining: Sequence[Joining],
                 running: int) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, torch.Tensor]]]:
    """The step's token ids and positions, the running rows' first (their pending tokens), then
    each joining row's prompt after its cached prefix; per joining row (its tokens' offset, their
    count, its causal mask over its columns ``[first, end]``)."""
    assert kv.lengths is not None and kv.pending is not None
    dev, end = kv.device, kv.end
    ids, positions = kv.pending[:running], kv.lengths[:running]
    if not joining:
        return ids, positions, []
    spans, offset = [], running
    for j in joining:
        own = end + 1 - j.first
        spans.append((offset, len(j.ids), torch.arange(own, device=dev)[None, :]
                      <= torch.arange(j.cached, own, device=dev)[:, None]))
        offset += len(j.ids)
    ids = torch.cat([ids, torch.tensor([t for j in joining for t in j.ids], device=dev)])
    positions = torch.cat([positions, torch.tensor([p for j in joining for p in range(j.cached, j.cached + len(j.ids))],
                                                   device=dev)])
    return ids, positions, spans


def _prompt_attention(j: Joining, end: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keys: torch.Tensor,
                      values: torch.Tensor, causal: torch.Tensor, scale: float) -> torch.Tensor:
    """A joining row's prompt tokens (``q``, ``k``, ``v``: [tokens, heads, dim]): their keys and values
    go into its columns after its cached prefix, and they attend causally over its columns;
    returns [tokens, heads * dim]."""
    tokens, heads, dim = q.shape
    cols = slice(j.first + j.cached, end + 1)
    keys[j.row, :, cols] = k.transpose(0, 1)
    values[j.row, :, cols] = v.transpose(0, 1)
    own = slice(j.first, end + 1)
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], keys[j.row:j.row + 1, :, own],
                                         values[j.row:j.row + 1, :, own], attn_mask=causal, scale=scale,
                                         enable_gqa=keys.shape[1] != heads)
    return out[0].transpose(0, 1).reshape(tokens, heads * dim)


class DecodeAttention:
    """Attention of one query per row over its window, two ways that give the same result; which
    is faster depends on the CPU, so :func:`decode_attention` times both. Called with ``q`` [rows,
    heads, dim], ``keys`` and ``values`` [rows, kv_heads, columns, dim] and the step's mask in the
    form :meth:`mask` made; returns [rows, heads * dim]."""

    name = ""

    def mask(self, mask: torch.Tensor) -> torch.Tensor | None:
        """From the live window's mask [rows, columns] (1 = a real column), once per step."""
        raise NotImplementedError

    def __call__(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
                 scale: float) -> torch.Tensor:
        raise NotImplementedError


class MatmulAttention(DecodeAttention):
    """Two float32 batched matmuls, the heads grouped by their key/value head (as transformers'
    ``repeat_kv`` pairs them). Where the CPU has no AMX, 1-6× faster than
    ``scaled_dot_product_attention``, whose flash kernel is built for long queries: at 32 SmolLM2
    rows it was half of a decode step (AVX512-BF16, ``torch.profiler``)."""

    name = "matmul"

    def mask(self, mask: torch.Tensor) -> torch.Tensor | None:
        if bool(mask.all()):
            return None
        return torch.zeros(mask.shape, device=mask.device).masked_fill_(
            mask == 0, float("-inf"))[:, None, None, :]  # [rows, 1, 1, columns], added to the scores

    def __call__(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
                 scale: float) -> torch.Tensor:
        # In float32: MKL's small batched matmuls beat the bf16 ones at every batch size without AMX.
        rows, heads, dim = q.shape
        kv_heads = keys.shape[1]
        grouped = q.reshape(rows, kv_heads, heads // kv_heads, dim).float()
        scores = torch.matmul(grouped, keys.float().transpose(-1, -2)).mul_(scale)  # [rows, kv_heads, group, columns]
        if mask is not None:
            scores.add_(mask)
        probs = torch.softmax(scores, dim=-1)
        return torch.matmul(probs, values.float()).to(q.dtype).reshape(rows, heads * dim)


class FusedAttention(DecodeAttention):
    """``scaled_dot_product_attention`` on the cache's own dtype. With AMX (bf16) 1.2-2× faster than
    :class:`MatmulAttention` at every batch here: no float32 copy of the window (at 32 rows that copy
    was most of the attention's time). The query heads that share a key/value head go in as one
    query of ``group`` positions (no mask between them: each attends over the whole window), not
    through ``enable_gqa``: the flash kernel splits its work per (row, head) and a one-token query
    made each piece mostly overhead; with 3× fewer, larger pieces (SmolLM2: 9 heads over 3) a call
    at 16-32 rows over ~110 columns took 88 / 175 µs instead of 150 / 300 (AMX, bf16)."""

    name = "sdpa"

    def mask(self, mask: torch.Tensor) -> torch.Tensor | None:
        return None if bool(mask.all()) else mask.bool()[:, None, None, :]  # [rows, 1, 1, columns]

    def __call__(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
                 scale: float) -> torch.Tensor:
        rows, heads, dim = q.shape
        kv_heads = keys.shape[1]
        grouped = q.reshape(rows, kv_heads, heads // kv_heads, dim)  # head h reads key/value head h // group
        out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask, scale=scale)
        return out.reshape(rows, heads * dim)


class KernelAttention(DecodeAttention):
    """The C kernel (:meth:`handlers.cpu_kernels.Kernels.decode_attention`): each row's window read
    once from the cache in its own dtype, float32 arithmetic in registers, one rounding at the end;
    no float32 copy of the window (:class:`MatmulAttention`'s) and no flash-attention blocking built
    for long queries (:class:`FusedAttention`'s). Its (row, head) pairs run on torch's OpenMP threads
    where the library is linked to torch's runtime (:func:`handlers.cpu_kernels.openmp_runtime`).
    With AVX-512, head sizes 64 and 128 take a path written for the registers: 16 columns' scores
    at a time, up to 4 heads' accumulators at once, bfloat16 products by AVX512-BF16's dot-product
    instruction where the CPU has it (on the AMX machine 1.7x faster than SDPA at 32 rows)."""

    name = "c"

    def __init__(self, kernels: Kernels) -> None:
        self.kernels = kernels

    def mask(self, mask: torch.Tensor) -> torch.Tensor | None:
        return None if bool(mask.all()) else mask.to(torch.uint8)  # [rows, columns], a contiguous copy

    def __call__(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
                 scale: float) -> torch.Tensor:
        return self.kernels.decode_attention(q, keys, values, mask, scale)


ATTENTIONS: dict[str, type[DecodeAttention]] = {cls.name: cls for cls in (MatmulAttention, FusedAttention)}
_picked: dict[tuple, DecodeAttention] = {}


def attention_ways(dtype: torch.dtype, heads: int, kv_heads: int, dim: int,
                   kernels: Kernels | None = None) -> list[DecodeAttention]:
    """The decode attentions that can run here: the two torch ways, and the C kernel where there are
    kernels and it takes these shapes (:meth:`Kernels.takes_attention`)."""
    ways = [cls() for cls in ATTENTIONS.values()]
    if kernels is not None and dtype in DTYPES and kernels.takes_attention(heads, kv_heads, dim):
        ways.append(KernelAttention(kernels))
    return ways


def decode_attention(dtype: torch.dtype, heads: int, kv_heads: int, dim: int,
                     kernels: Kernels | None = None) -> DecodeAttention:
    """The fastest decode attention on this machine for these shapes (:func:`attention_ways`), timed
    once per process (a few tens of ms): 16 rows over 128 columns with some padding, each way in
    turns, best of three."""
    key = (dtype, heads, kv_heads, dim, kernels is not None)
    if key not in _picked:
        rows, columns = 16, 128
        q = torch.randn(rows, heads, dim, dtype=dtype)
        keys, values = (torch.randn(rows, kv_heads, columns, dim, dtype=dtype) for _ in range(2))
        mask = torch.ones(rows, columns, dtype=torch.long)
        mask[::2, :columns // 4] = 0
        ways = attention_ways(dtype, heads, kv_heads, dim, kernels)
        best = {way.name: float("inf") for way in ways}
        with torch.inference_mode():
            for _ in range(3):
                for way in ways:
                    prepared = way.mask(mask)
                    way(q, keys, values, prepared, 0.125)  # warm
                    start = time.perf_counter()
                    for _ in range(5):
                        way(q, keys, values, prepared, 0.125)
                    best[way.name] = min(best[way.name], time.perf_counter() - start)
        _picked[key] = min(ways, key=lambda way: best[way.name])
        log.info("decode attention: %s (%s)", _picked[key].name,
                 ", ".join(f"{name} {seconds / 5 * 1e6:.0f} us" for name, seconds in best.items()))
    return _picked[key]


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm as one ``F.rms_norm`` call (on CPU still several kernels, but ~30 % faster per
    call than the module's eight ops here; float32 inside, and in bf16 the weight is applied before
    the one rounding, where the module rounds twice: within bf16's precision of it)."""
    return F.rms_norm(x, weight.shape, weight, eps)


def _linear(module: nn.Module) -> Linear:
    if isinstance(module, PackedLinear):
        return module.packed
    if type(module) is nn.Linear:
        weight, bias = module.weight, module.bias
        return lambda x: F.linear(x, weight, bias)
    return module  # anything else (e.g. quantized layers): called as the model would


def _joined(*modules: nn.Module) -> Linear:
    """The siblings' outputs side by side: one matmul where they were fused, else one each."""
    members = [m for m in modules if isinstance(m, FusedMember)]
    if len(members) == len(modules) and len({id(m.group) for m in members}) == 1:
        group = members[0].group
        if [m.member for m in members] == list(range(len(group.sizes))):
            return group.packed
    parts = [_linear(m) for m in modules]
    return lambda x: torch.cat([part(x) for part in parts], dim=-1)
