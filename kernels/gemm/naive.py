"""Reference linear map (plain PyTorch, any device): y = x @ weight^T + bias.

x: [..., K]; weight: [N, K]; bias: [N] or None. Returns [..., N] in x's dtype (F.linear: cuBLAS on CUDA).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, weight, bias)
