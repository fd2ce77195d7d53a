"""Triton RMSNorm with a fused residual add (same semantics as ``naive.rms_norm``).

One program per row of C channels (the whole row in registers, C <= 16384): it loads x (and the
residual), stores h = x + residual rounded to x's dtype, and y = h * rsqrt(mean(h^2) + eps) * w from
that rounded h -- bit-for-bit the order of ``naive.rms_norm``, one read of each input and one write of
each output instead of the ~8 passes of the eager version.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.utils import next_power_of_2


@triton.jit
def rms_norm_kernel(x, r, w, y, h, stride_x, stride_r, stride_y, stride_h, C, eps,
                    BC: tl.constexpr, HAS_R: tl.constexpr):
    i_m = tl.program_id(0).to(tl.int64)
    o_c = tl.arange(0, BC)
    m_c = o_c < C
    b_x = tl.load(x + i_m * stride_x + o_c, mask=m_c, other=0.0)
    if HAS_R:
        b_r = tl.load(r + i_m * stride_r + o_c, mask=m_c, other=0.0)
        b_h = (b_x.to(tl.float32) + b_r.to(tl.float32)).to(h.dtype.element_ty)
        tl.store(h + i_m * stride_h + o_c, b_h, mask=m_c)
        b_hf = b_h.to(tl.float32)
    else:
        b_hf = b_x.to(tl.float32)
    b_var = tl.sum(b_hf * b_hf, 0) / C
    b_w = tl.load(w + o_c, mask=m_c, other=0.0).to(tl.float32)
    b_y = b_hf * tl.rsqrt(b_var + eps) * b_w
    tl.store(y + i_m * stride_y + o_c, b_y.to(y.dtype.element_ty), mask=m_c)


def _rows(t: torch.Tensor, C: int) -> torch.Tensor:
    t2 = t.reshape(-1, C)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def rms_norm(
    x: torch.Tensor,  # [..., C]
    weight: torch.Tensor,  # [C]
    eps: float,
    residual: torch.Tensor | None = None,  # [..., C] like x
) -> tuple[torch.Tensor, torch.Tensor]:  # (y, h = x + residual), both [..., C] in x's dtype
    C = x.shape[-1]
    if weight.shape != (C,):
        raise ValueError(f"weight {tuple(weight.shape)} does not match {C} channels")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual {tuple(residual.shape)} != x {tuple(x.shape)}")
    x2 = _rows(x, C)
    M = x2.shape[0]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if residual is not None:
        r2 = _rows(residual, C)
        h = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    else:
        r2, h = x2, x
    if M == 0:
        return y, h
    BC = next_power_of_2(C)
    rms_norm_kernel[(M,)](
        x2, r2, weight, y, h, x2.stride(0), r2.stride(0), C, C, C, float(eps),
        BC=BC, HAS_R=residual is not None, num_warps=4 if BC <= 2048 else 8,
    )
    return y, h
