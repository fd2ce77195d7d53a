"""Fused model ops (kernels/norm, kernels/glu, kernels/gate): Triton against the references.

CPU: under TRITON_INTERPRET=1 on small shapes (skipped when neither it nor CUDA is there); GPU: the
same checks plus model-sized shapes. Outputs start as NaN (fresh buffers, NaN caches beyond each
length), inputs are fresh random draws, and k/v/f arrive as strided views of one fused projection
as the model hands them over.
"""

from __future__ import annotations

import pytest
import torch

from conftest import interpret, rel_err
from kernels.gate import naive as gate_naive
from kernels.norm import naive as norm_naive
from kernels.glu import naive as swiglu_naive

pytestmark = pytest.mark.skipif(
    not (interpret or torch.cuda.is_available()), reason="Triton kernels need CUDA or TRITON_INTERPRET=1"
)
if interpret or torch.cuda.is_available():
    from kernels.gate import gate as gate_triton
    from kernels.norm import rmsnorm as norm_triton
    from kernels.glu import swiglu as swiglu_triton

DEVICE = "cuda" if torch.cuda.is_available() and not interpret else "cpu"
DTYPES = [torch.float32, torch.bfloat16] if DEVICE == "cuda" else [torch.float32]
# one rounding of the output in the dtype on top of fp32 arithmetic
TOL = {torch.float32: 1e-5, torch.bfloat16: 8e-3}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 100), (1, 1, 576), (2, 7, 64)] + ([(4, 2048, 576)] if DEVICE == "cuda" else []))
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm(shape, dtype, with_residual):
    x = torch.randn(shape, device=DEVICE).to(dtype)
    r = torch.randn(shape, device=DEVICE).to(dtype) if with_residual else None
    w = (1 + 0.3 * torch.randn(shape[-1], device=DEVICE)).to(dtype)
    y_ref, h_ref = norm_naive.rms_norm(x.double(), w.double(), 1e-6, r.double() if r is not None else None)
    y, h = norm_triton.rms_norm(x, w, 1e-6, r)
    assert y.dtype == dtype and y.shape == x.shape
    assert rel_err(y, y_ref) < TOL[dtype]
    assert rel_err(h, h_ref) < TOL[dtype]
    # h is exactly PyTorch's x + r in the dtype, and y the reference computed from it
    y_same, h_same = norm_naive.rms_norm(x, w, 1e-6, r)
    assert torch.equal(h, h_same)
    assert rel_err(y, y_same) < TOL[dtype]


def test_rms_norm_strided_rows():
    x = torch.randn(2, 9, 64, device=DEVICE)[:, -1:]  # last position of each row (last_only prefill)
    r = torch.randn(2, 9, 64, device=DEVICE)[:, -1:]
    w = torch.randn(64, device=DEVICE)
    y, h = norm_triton.rms_norm(x, w, 1e-5, r)
    y_ref, h_ref = norm_naive.rms_norm(x, w, 1e-5, r)
    assert rel_err(y, y_ref) < 1e-5 and rel_err(h, h_ref) < 1e-6


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,N", [(1, 1536), (5, 100), (3, 2049)] + ([(8192, 1536)] if DEVICE == "cuda" else []))
def test_swiglu(M, N, dtype):
    gu = torch.randn(M, 2 * N, device=DEVICE).to(dtype) * 3  # one fused gate/up projection
    gate, up = gu.split(N, dim=-1)
    ref = swiglu_naive.swiglu(gate.double(), up.double())
    out = swiglu_triton.swiglu(gate, up)
    assert out.shape == (M, N) and out.dtype == dtype and out.is_contiguous()
    assert rel_err(out, ref) < TOL[dtype]


def _fused_projection(B, Tn, HQ, H, D, dtype, gated):
    """q, k, v [B, Tn, *, D] and f [B, Tn, HQ] as views of one [B, Tn, N] projection output."""
    sizes = [HQ * D, H * D, H * D] + ([HQ] if gated else [])
    out = torch.randn(B, Tn, sum(sizes), device=DEVICE).to(dtype)
    parts = out.split(sizes, dim=-1)
    k = parts[1].view(B, Tn, H, D)
    v = parts[2].view(B, Tn, H, D)
    f = (parts[3].float() * 3 + 2).to(dtype) if gated else None  # logits spread around sigmoid's knee
    return k, v, f


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("B,Tn,HQ,H,D,lens", [
    (3, 1, 9, 3, 64, [0, 5, 17]),
    (2, 5, 4, 2, 100, [3, 0]),
    (1, 70, 6, 2, 32, [10]),
    (2, 1, 2, 2, 16, [31, 30]),  # the last token of a full cache
])
def test_append_kv(B, Tn, HQ, H, D, lens, gated):
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    Tmax = 32 if max(lens) + Tn <= 32 else max(lens) + Tn
    k, v, f = _fused_projection(B, Tn, HQ, H, D, dtype, gated)
    seqlens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)

    def caches():
        kc = torch.randn(B, Tmax, H, D, device=DEVICE).to(dtype)
        gc = (-torch.rand(B, Tmax, HQ, device=DEVICE).cumsum(1)) if gated else None
        return kc, kc.clone(), gc

    torch.manual_seed(0)
    k_ref, v_ref, gc_ref = caches()
    for b, n in enumerate(lens):  # NaN past each length: nothing may read there
        k_ref[b, n:] = float("nan")
        v_ref[b, n:] = float("nan")
    k_out, v_out = k_ref.clone(), v_ref.clone()
    gc_out = gc_ref.clone() if gated else None
    if gated:
        for b, n in enumerate(lens):
            gc_ref[b, n:] = float("nan")
            gc_out[b, n:] = float("nan")
    gate_naive.append_kv(k_ref, v_ref, gc_ref, k, v, f, seqlens)
    gate_triton.append_kv(k_out, v_out, gc_out, k, v, f, seqlens)
    for b, n in enumerate(lens):
        end = n + Tn
        assert torch.equal(k_out[b, :end], k_ref[b, :end]) and torch.equal(v_out[b, :end], v_ref[b, :end])
        assert torch.isnan(k_out[b, end:].float()).all()
        if gated:
            assert rel_err(gc_out[b, :end], gc_ref[b, :end]) < 1e-6
            assert torch.isnan(gc_out[b, end:]).all()
    assert torch.equal(seqlens.cpu(), torch.tensor(lens, dtype=torch.int32))
