"""Triton rotary position embedding of q and k in one launch (same semantics as ``naive.apply_rope``).

One program per token (b, t): it loads the token's D2 = D / 2 angles' cos and sin once (fp32, row b of
the tables or row 0 when the batch shares them) and rotates all HQ query heads and H key heads,
    y1 = x1 * cos - x2 * sin,   y2 = x2 * cos + x1 * sin      (x = (x1, x2) halves of each head)
in fp32, writing contiguous outputs. q and k may be strided views (pieces of one fused q/k/v
projection: any batch, token and head strides, unit channel stride). No host synchronisation: the
angles come from the device (safe inside a CUDA graph).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.utils import next_power_of_2


@triton.jit
def _rotate_heads(x, y, stride_h, b_cos, b_sin, o_d, m_d, NH: tl.constexpr, D2: tl.constexpr,
                  BH: tl.constexpr):
    """Rotate the NH heads of one token: x at x + h * stride_h (unit channel stride), y contiguous."""
    o_h = tl.arange(0, BH)
    m_x = (o_h < NH)[:, None] & m_d[None, :]
    p_x1 = x + o_h[:, None] * stride_h + o_d[None, :]
    b_x1 = tl.load(p_x1, mask=m_x, other=0.0).to(tl.float32)
    b_x2 = tl.load(p_x1 + D2, mask=m_x, other=0.0).to(tl.float32)
    b_y1 = b_x1 * b_cos[None, :] - b_x2 * b_sin[None, :]
    b_y2 = b_x2 * b_cos[None, :] + b_x1 * b_sin[None, :]
    p_y1 = y + o_h[:, None] * (2 * D2) + o_d[None, :]
    tl.store(p_y1, b_y1.to(y.dtype.element_ty), mask=m_x)
    tl.store(p_y1 + D2, b_y2.to(y.dtype.element_ty), mask=m_x)


@triton.jit
def rope_kernel(q, k, q_out, k_out, cos, sin, T,
                stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_cb, stride_ct,
                HQ: tl.constexpr, H: tl.constexpr, D2: tl.constexpr,
                BHQ: tl.constexpr, BH: tl.constexpr, BD2: tl.constexpr):
    i_bt = tl.program_id(0).to(tl.int64)
    i_b, i_t = i_bt // T, i_bt % T
    o_d = tl.arange(0, BD2)
    m_d = o_d < D2
    o_c = i_b * stride_cb + i_t * stride_ct
    b_cos = tl.load(cos + o_c + o_d, mask=m_d, other=0.0)
    b_sin = tl.load(sin + o_c + o_d, mask=m_d, other=0.0)
    _rotate_heads(q + i_b * stride_qb + i_t * stride_qt, q_out + i_bt * (HQ * 2 * D2), stride_qh,
                  b_cos, b_sin, o_d, m_d, HQ, D2, BHQ)
    _rotate_heads(k + i_b * stride_kb + i_t * stride_kt, k_out + i_bt * (H * 2 * D2), stride_kh,
                  b_cos, b_sin, o_d, m_d, H, D2, BH)


def _unit_channel_stride(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def apply_rope(
    q: torch.Tensor,  # [B, T, HQ, D]
    k: torch.Tensor,  # [B, T, H, D]
    cos: torch.Tensor,  # [B or 1, T, D / 2] fp32
    sin: torch.Tensor,  # [B or 1, T, D / 2] fp32
) -> tuple[torch.Tensor, torch.Tensor]:  # rotated q, k: contiguous, in q's / k's dtypes
    if q.dim() != 4 or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must be [B, T, heads, D] alike")
    B, T, HQ, D = q.shape
    H = k.shape[2]
    if D % 2:
        raise ValueError(f"RoPE needs an even head dim, got {D}")
    D2 = D // 2
    if cos.shape != sin.shape or cos.shape[0] not in (1, B) or cos.shape[1:] != (T, D2):
        raise ValueError(f"cos {tuple(cos.shape)} / sin {tuple(sin.shape)} must be [B or 1, T, D/2] = [{B}, {T}, {D2}]")
    if cos.dtype != torch.float32 or sin.dtype != torch.float32:
        raise ValueError("cos and sin must be fp32")
    q, k = _unit_channel_stride(q), _unit_channel_stride(k)
    cos, sin = cos.contiguous(), sin.contiguous()
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if B * T == 0:
        return q_out, k_out
    BHQ, BH, BD2 = next_power_of_2(HQ), next_power_of_2(H), next_power_of_2(D2)
    rope_kernel[(B * T,)](
        q, k, q_out, k_out, cos, sin, T,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        cos.stride(0) if cos.shape[0] > 1 else 0, cos.stride(1),
        HQ=HQ, H=H, D2=D2, BHQ=BHQ, BH=BH, BD2=BD2, num_warps=4 if BHQ * BD2 >= 2048 else 1,
    )
    return q_out, k_out
