"""gatedgen's attention kernels: Triton on CUDA, plain-PyTorch references everywhere else.

PyPI has an unrelated package named ``kernels``; this one is installed with gatedgen and carries
``GATEDGEN_KERNELS = True`` so tests (and users) can check which one Python imported.

Public entry points (same signatures as ``kernels.attn.naive``):
    parallel_attn(q, k, v, g=None, scale=None, cu_seqlens=None, *, gc=None, return_lse=False)
    decode_attn(q, k_cache, v_cache, gc_cache=None, cache_seqlens=None, scale=None)
    update_cache(k_cache, v_cache, gc_cache, k, v, g, cache_seqlens)
    rebase_gate_cache(gc_cache, cache_seqlens)
Fused model ops (kernels/norm, kernels/glu, kernels/gate; references in each ``naive.py``):
    rms_norm(x, weight, eps, residual=None) -> (y, x + residual)
    swiglu(gate, up)
    append_kv(k_cache, v_cache, gc_cache, k, v, f, cache_seqlens)   f: forget-gate logits
    linear(x, weight, bias=None)   F.linear; Triton skinny GEMM for <= 32 rows on CUDA (kernels/gemm)
    linear_swiglu(x, weight, inter, bias=None)   swiglu of a fused gate/up linear (skinny GEMM epilogue)
    rms_norm_linear(x, norm_weight, eps, weight, bias=None, residual=None, inter=None) -> (y, h)
        linear (linear_swiglu with inter) of rms_norm(h = x + residual): the norm folded into the skinny GEMM
    apply_rope(q, k, cos, sin) -> (q, k) rotated      cos, sin: [B or 1, T, D/2] fp32 (kernels/rope)
"""

from __future__ import annotations

from kernels.dispatch import (
    append_kv,
    apply_rope,
    decode_attn,
    linear,
    linear_swiglu,
    parallel_attn,
    rebase_gate_cache,
    rms_norm,
    rms_norm_linear,
    swiglu,
    triton_available,
    update_cache,
)

GATEDGEN_KERNELS = True

__all__ = [
    "GATEDGEN_KERNELS",
    "append_kv",
    "apply_rope",
    "decode_attn",
    "linear",
    "linear_swiglu",
    "parallel_attn",
    "rebase_gate_cache",
    "rms_norm",
    "rms_norm_linear",
    "swiglu",
    "triton_available",
    "update_cache",
]
