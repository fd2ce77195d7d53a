"""Triton SwiGLU: silu(gate) * up in fp32, rounded once (same semantics as ``naive.swiglu``).

gate and up may be strided views (the two halves of one fused gate/up projection); one program per
(row, block of BI channels) reads each once and writes the contiguous product.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def swiglu_kernel(gate, up, out, stride_g, stride_u, N, BI: tl.constexpr):
    i_m, i_n = tl.program_id(0).to(tl.int64), tl.program_id(1)
    o_n = i_n * BI + tl.arange(0, BI)
    m_n = o_n < N
    b_g = tl.load(gate + i_m * stride_g + o_n, mask=m_n, other=0.0).to(tl.float32)
    b_u = tl.load(up + i_m * stride_u + o_n, mask=m_n, other=0.0).to(tl.float32)
    b_o = b_g * tl.sigmoid(b_g) * b_u
    tl.store(out + i_m * N + o_n, b_o.to(out.dtype.element_ty), mask=m_n)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:  # [..., I] each -> [..., I]
    if gate.shape != up.shape:
        raise ValueError(f"gate {tuple(gate.shape)} and up {tuple(up.shape)} disagree")
    N = gate.shape[-1]
    g2, u2 = gate.reshape(-1, N), up.reshape(-1, N)
    if g2.stride(-1) != 1:
        g2 = g2.contiguous()
    if u2.stride(-1) != 1:
        u2 = u2.contiguous()
    out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    M = g2.shape[0]
    if M == 0:
        return out
    BI = 1024
    swiglu_kernel[(M, triton.cdiv(N, BI))](g2, u2, out, g2.stride(0), u2.stride(0), N, BI=BI, num_warps=4)
    return out
