"""Reference RMSNorm with a fused residual add (plain PyTorch, any device).

    h = x + residual          (rounded to x's dtype, exactly as ``x + residual`` in PyTorch)
    y = h / sqrt(mean(h^2) + eps) * weight      (fp32 arithmetic, rounded to x's dtype)

x, residual: [..., C]; weight: [C]. Returns (y, h): h is the new residual stream.
"""

from __future__ import annotations

import torch


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    h = x if residual is None else x + residual
    hf = h.float()
    y = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.float()).to(x.dtype), h
