"""Reference rotary position embedding (HF Llama "rotate half" convention), plain PyTorch.

Each head vector x = (x1, x2) of D = 2 * D2 channels is rotated by the angles of its token:
    y1 = x1 * cos - x2 * sin
    y2 = x2 * cos + x1 * sin
in fp32, rounded once to x's dtype -- the same as HF's ``x * cat(cos, cos) + rotate_half(x) * cat(sin, sin)``.

q [B, T, HQ, D], k [B, T, H, D] (any strides); cos, sin [B or 1, T, D2] fp32 (row 0 is shared by the
batch when it has one row). Returns (q_rot, k_rot), contiguous, in q's and k's dtypes.
"""

from __future__ import annotations

import torch


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)  # [B, T, heads, D2]
    c, s = cos[:, :, None, :], sin[:, :, None, :]  # one angle per (token, channel pair), all heads
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


def apply_rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return _rotate(q, cos, sin), _rotate(k, cos, sin)
