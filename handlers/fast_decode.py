"""One decode step of a Llama-architecture model straight from its modules, over the slot cache.

The model's own forward runs ~50 tensor ops and a dozen module calls per layer for one new token
per row, and builds a mask, a cache-position vector and output objects on every step; on 2 CPU
cores that dispatch is serial Python while the matmuls wait. This runs the same math from the same
weights with fewer ops: q/k/v and gate/up as one matmul each where :mod:`handlers.cpu_linear`
fused them, RoPE on q and k together, the new keys/values written straight into the slot buffers
(:meth:`handlers.slot_cache.SlotCache.write`), one SDPA over the live window, and only the rows'
last positions through the LM head. Prefill stays on the model's own forward.

Only for architectures whose decoder layer is exactly Llama's (``LlamaForCausalLM``,
``Qwen2ForCausalLM``, ``MistralForCausalLM``: pre-norm RMSNorm, attention with optional q/k/v bias
and any RoPE type the model's rotary module computes, SiLU-gated MLP); anything else, or any module
this file does not recognise, keeps the model's forward (:func:`build` returns None). fp32 tests
check it gives the model's forward's tokens.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_linear import FusedMember, PackedLinear
from .slot_cache import SlotCache

ARCHITECTURES = {"LlamaForCausalLM": "Llama", "Qwen2ForCausalLM": "Qwen2", "MistralForCausalLM": "Mistral"}

Linear = Callable[[torch.Tensor], torch.Tensor]


def build(model: Any) -> "FastDecoder | None":
    """A decoder for ``model``, or None when its structure is not the one this file knows."""
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
    return FastDecoder(model)


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


class FastDecoder:
    def __init__(self, model: Any) -> None:
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.embed = model.model.embed_tokens
        self.rotary = model.model.rotary_emb
        self.norm = (model.model.norm.weight, model.model.norm.variance_epsilon)
        self.lm_head = _linear(model.lm_head)
        self.layers = [_Layer(layer) for layer in model.model.layers]

    def __call__(self, kv: Any, inputs: dict[str, Any]) -> torch.Tensor:
        """Logits ``[rows, vocab]`` of one decode step over ``kv.decode_inputs()``; the new keys and
        values are written into ``kv``'s buffers (its ``advance`` follows, as after the model's forward)."""
        ids, positions, mask = inputs["input_ids"], inputs["position_ids"], inputs["attention_mask"]
        rows, heads, kv_heads, dim = ids.shape[0], self.heads, self.kv_heads, self.head_dim
        x = self.embed(ids)  # [rows, 1, hidden]
        cos, sin = self.rotary(x, positions)  # [rows, 1, head_dim]
        cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # broadcast over heads in [rows, 1, heads, dim]
        attn_mask = None if bool(mask.all()) else mask.bool()[:, None, None, :]
        half = dim // 2
        for i, layer in enumerate(self.layers):
            qkv = layer.qkv(_rms_norm(x, *layer.norm1)).view(rows, 1, heads + 2 * kv_heads, dim)
            qk = qkv[:, :, :heads + kv_heads]
            qk = qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin
            keys, values = kv.write(i, qk[:, :, heads:].transpose(1, 2), qkv[:, :, heads + kv_heads:].transpose(1, 2))
            out = F.scaled_dot_product_attention(qk[:, :, :heads].transpose(1, 2), keys, values, attn_mask=attn_mask,
                                                 scale=layer.scaling, enable_gqa=kv_heads != heads)
            x = x + layer.o(out.transpose(1, 2).reshape(rows, 1, heads * dim))
            gate, up = layer.gate_up(_rms_norm(x, *layer.norm2)).chunk(2, dim=-1)
            x = x + layer.down(F.silu(gate) * up)
        return self.lm_head(_rms_norm(x, *self.norm))[:, -1]


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm, as its module computes it (in float32, scaled after the cast back)."""
    h = x.float()
    return weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


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
