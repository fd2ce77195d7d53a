"""Reference linear maps (plain PyTorch, any device).

linear:        y = x @ weight^T + bias.  x: [..., K]; weight: [N, K]; bias: [N] or None -> [..., N]
linear_swiglu: silu(x W_gate^T + b_gate) * (x W_up^T + b_up) with W = weight [2 I, K] (gate rows
               0..I-1, up rows I..2I-1), bias [2 I] or None -> [..., I]; the GEMM in x's dtype
               (F.linear: cuBLAS on CUDA), the SwiGLU in fp32 rounded once (kernels.glu.naive).
rms_norm_linear: either map of n = rms_norm(h) * norm_weight, h = x + residual (kernels.norm.naive)
               -> (y, h).
Outputs in x's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.glu.naive import swiglu
from kernels.norm.naive import rms_norm


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, weight, bias)


def linear_swiglu(x: torch.Tensor, weight: torch.Tensor, inter: int,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    if weight.shape[0] != 2 * inter:
        raise ValueError(f"weight has {weight.shape[0]} rows, not 2 x {inter}")
    gate, up = F.linear(x, weight, bias).split(inter, dim=-1)
    return swiglu(gate, up)


def rms_norm_linear(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, weight: torch.Tensor,
                    bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                    inter: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(linear(n, weight, bias) or with ``inter`` linear_swiglu(n, weight, inter, bias), h) of
    n, h = rms_norm(x, norm_weight, eps, residual): h = x + residual rounded to x's dtype (x without one)."""
    n, h = rms_norm(x, norm_weight, eps, residual)
    return (linear(n, weight, bias) if inter is None else linear_swiglu(n, weight, inter, bias)), h
