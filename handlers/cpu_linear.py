"""Faster linear layers for bf16 and fp32 on CPU: oneDNN-prepacked weights, sibling projections fused.

Measured on 2 cores with AMX (``python -m bench.engine_step``, module docstring there): a bf16
``F.linear`` reorders its weight for oneDNN on every call, about 40 µs of a SmolLM2 projection that
computes in 10–60 µs; a weight reordered once (``torch.ops.mkldnn._reorder_linear_weight``, the
packing inductor's CPU backend does when it freezes a model) runs 1.4–2.5× faster at batch 1–32,
the 49k-row LM head 1.3 ms instead of 4.7 at batch 1. Sibling projections that read the same input
(q/k/v, gate/up) run as one matmul: fewer, larger calls.

The model's own modules are kept: each ``nn.Linear`` is swapped for a module with the same call.
Fused siblings share one computation: the first member called with an input computes every
member's output and keeps the others for their calls with *that same* input (tensor identity; the
stash holds the input, so the identity cannot be reused), so a model that calls them in any order,
or with different inputs, still gets correct results.

bf16 and fp32 on CPU (:func:`fp32_wanted` says why fp32 too): see :func:`optimize`. A tied LM head (SmolLM2, Llama 3.2, Qwen 2.5 share it with the token embedding)
is packed too, into a copy: the vocabulary matrix is then held twice (SmolLM2-135M: +57 MB in bf16,
~21 % of its weights; +113 MB in fp32) for an LM head 3.6× faster at batch 1; ``LLMHOST_CPU_KERNELS=false`` keeps
the plain layers.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

BATCH_HINT = 32  # the batch size the packed layout is tuned for (it serves any batch size)
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def onednn() -> bool:
    """This torch has oneDNN and its prepacked linear ops."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def fp32_wanted() -> bool:
    """oneDNN for fp32 too, where MKL's sgemm (what ``F.linear`` runs in fp32) takes slow paths
    at the batch sizes decoding has. SmolLM2's shapes, 2 threads:

    - 2 AMD EPYC (AVX2) cores: a packed weight runs the 49k-row LM head 2× faster at batch 1 (7 ms
      instead of 15) and the projections 1.2–1.7× at batch 16–32; in-process decode 11 → 14, 74 →
      110, 98 → 150 tok/s at 1 / 16 / 32 rows.
    - 2 Intel Xeon (AVX-512, no bf16) cores: MKL is fast for 1–3 rows (~10 % ahead, a gemv path)
      and 1.5–2.7× slower from 4 rows on (the LM head at 8 rows 20 ms against 7); in-process
      decode 24.1 → 21.6, 43.4 → 39.0, 44.6 → 71.7, 85.4 → 123.9, 155.3 → 194.2 tok/s at 1 / 2 / 4
      / 8 / 16 rows. Keeping both layouts to pick per batch size would hold the weights twice.

    A packed weight's rows also come out the same whatever the batch (MKL's do not), so batched
    greedy stays unbatched greedy."""
    return onednn()


def available() -> bool:
    """oneDNN with bf16 kernels for this CPU (its reorder refuses bf16 without AVX512-BW/VL/DQ or
    AVX-NE-CONVERT; ``LLMHOST_DTYPE=bfloat16`` on such a CPU keeps the plain layers)."""
    if not onednn():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class _Packed:
    """A weight reordered for oneDNN, and its bias."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), BATCH_HINT)
        self.bias = None if bias is None else bias.detach().contiguous()
        self.out_features = weight.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.weight, self.bias, "none", [], "")


class PackedLinear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = _Packed(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.packed(x)


class _Group:
    """Sibling projections computed as one matmul; outputs kept for the members still to ask."""

    def __init__(self, linears: list[nn.Linear]) -> None:
        weight = torch.cat([lin.weight for lin in linears])
        biases = [lin.bias for lin in linears]
        bias = None if all(b is None for b in biases) else torch.cat(
            [b if b is not None else torch.zeros(lin.out_features, dtype=weight.dtype, device=weight.device)
             for b, lin in zip(biases, linears)])
        self.packed = _Packed(weight, bias)
        self.sizes = [lin.out_features for lin in linears]
        self._input: torch.Tensor | None = None
        self._outputs: list[torch.Tensor | None] = []

    def output(self, member: int, x: torch.Tensor) -> torch.Tensor:
        if x is not self._input or self._outputs[member] is None:
            self._input, self._outputs = x, list(self.packed(x).split(self.sizes, dim=-1))
        out = self._outputs[member]
        assert out is not None
        self._outputs[member] = None
        if all(o is None for o in self._outputs):
            self._input = None  # everyone has theirs: hold no activations between calls
        return out


class FusedMember(nn.Module):
    def __init__(self, group: _Group, member: int, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.group, self.member = group, member

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.output(self.member, x)


def optimize(model: Any, device: torch.device, dtype: torch.dtype, enabled: bool = True) -> int:
    """Swap the model's bf16 or fp32 CPU ``nn.Linear`` layers for packed (and fused) ones, in place;
    returns how many were swapped (0: not applicable here)."""
    if not enabled or device.type != "cpu":
        return 0
    if not (available() if dtype == torch.bfloat16 else dtype == torch.float32 and fp32_wanted()):
        return 0
    swapped = 0
    for parent in list(model.modules()):
        for names in SIBLINGS:
            linears = [getattr(parent, n, None) for n in names]
            if all(type(lin) is nn.Linear for lin in linears) and len({lin.in_features for lin in linears}) == 1:  # type: ignore[union-attr]
                group = _Group(linears)  # type: ignore[arg-type]
                for i, (name, lin) in enumerate(zip(names, linears)):
                    setattr(parent, name, FusedMember(group, i, lin))  # type: ignore[arg-type]
                swapped += len(names)
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child.weight.dtype == dtype:
                setattr(parent, name, PackedLinear(child))
                swapped += 1
    log.info("packed %d linear layers for oneDNN (%s on CPU)", swapped, str(dtype).removeprefix("torch."))
    return swapped
