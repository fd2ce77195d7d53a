"""Weight-only int8 for CPU decoding: each linear map's weight W [N, K] is stored as int8 rows with one
scale per output row (symmetric, round to nearest):

    s_n = max_k |W_nk| / 127,   Q_nk = round(W_nk / s_n) in [-127, 127],   y = (x Q^T) * s + b

Why: at one token per step a CPU decode is a read of every weight. On the 2-core dev machine (32 MB
L3, ~7 GB/s from DRAM) the default model's 52 MB of fp32 weights take ~7 ms per token; int8 makes them
13 MB -- they stay in the L3 -- and torch's int8 weight kernel (``_weight_int8pack_mm``, bf16
activations) reads them ~9x faster than the fp32 GEMV. Activations, norms, attention and the KV cache
keep the model's dtype; only the products with the weights change, by at most half a quantisation step
per weight. ``gatedgen complete --quantize none`` runs the exact weights.

    quantize_int8(model)   # in place: every nn.Linear -> Int8Linear; the LM head gets an int8 copy

The reference of one product is ``Int8Linear.dequantized`` (plain PyTorch, Q * s in fp32), used where
the fast op is missing or does not take the input's shape or dtype.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from gatedgen.model import CausalLM

QUANTIZATIONS = ("none", "int8")
_HAS_INT8_MM = hasattr(torch.ops.aten, "_weight_int8pack_mm")
K_MULTIPLE = 16  # the op reads K in blocks of 16 (other K: wrong sums or a crash in torch 2.13, tested)


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (Q [N, K] int8, s [N] fp32) with W ~= Q * s[:, None]."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0  # an all-zero row keeps Q = 0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale


class Int8Linear(nn.Module):
    """y = x W^T + b with W held as int8 rows and fp32 scales (see the module docstring)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        q, scale = quantize_rows(weight)
        self.out_features, self.in_features = q.shape
        self.pad = -self.in_features % K_MULTIPLE  # zero columns appended for the fast op
        self.register_buffer("qweight", q)  # [N, K] int8
        self.register_buffer("qweight_padded", torch.nn.functional.pad(q, (0, self.pad)) if self.pad else None)
        self.register_buffer("scale", scale)  # [N] fp32
        self.register_buffer("scale_bf16", scale.to(torch.bfloat16))  # the fast op's scale dtype
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        return cls(linear.weight, linear.bias)

    def dequantized(self, x: torch.Tensor) -> torch.Tensor:
        """The same product in plain PyTorch: x (Q * s)^T + b in fp32, output in x's dtype."""
        w = self.qweight.float() * self.scale[:, None]
        y = x.float() @ w.t()
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [..., K] -> [..., N] in x's dtype
        if not _HAS_INT8_MM or x.device.type != "cpu" or x.dtype == torch.float16:
            return self.dequantized(x)
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)  # [M, K]
        q = self.qweight
        if self.pad:  # [M, K + pad] with zeros against the padded weight's zero columns
            x2, q = torch.nn.functional.pad(x2, (0, self.pad)), self.qweight_padded
        y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), q, self.scale_bf16).float()  # [M, N]
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-row"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear of ``model`` by an Int8Linear in place (idempotent). A CausalLM keeps its
    LM head (``output_weight``: the tied embedding or ``lm_head``, which also gives the model its dtype
    and device) and becomes an Int8HeadLM: ``model.lm_head_int8``, a quantised copy, computes the logits."""
    head = getattr(model, "lm_head", None)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child is not head:
                setattr(parent, name, Int8Linear.from_linear(child))
    if isinstance(model, CausalLM) and not isinstance(model, Int8HeadLM):
        model.lm_head_int8 = Int8Linear(model.output_weight, None)
        model.__class__ = Int8HeadLM
    return model


class Int8HeadLM(CausalLM):
    """A CausalLM whose logits come from the int8 copy of its LM head (set by ``quantize_int8``)."""

    lm_head_int8: Int8Linear

    def logits(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        y, _ = self.model.norm(x, residual)  # RMSNorm(x + residual)
        return self.lm_head_int8(y).float()
