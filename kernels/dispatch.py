"""Pick the Triton kernel for CUDA tensors and the reference otherwise.

The Triton modules are imported lazily so that a CPU-only install without Triton still works.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch

from kernels.attn import naive


@functools.cache
def triton_available() -> bool:
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return torch.cuda.is_available()


@functools.cache
def _triton_fn(module: str, name: str):
    """kernels.attn.<module>.<name>, or None where it cannot be imported (looked up once: a decode
    step calls these per layer)."""
    try:
        mod = importlib.import_module(f"kernels.attn.{module}")
    except ImportError:
        return None
    return getattr(mod, name, None)


def _impl(module: str, name: str, tensor: torch.Tensor):
    if tensor.is_cuda and triton_available():
        fn = _triton_fn(module, name)
        if fn is not None:
            return fn
    return getattr(naive, name)


def parallel_attn(q, k, v, g=None, scale=None, cu_seqlens=None, *, gc=None, return_lse=False):
    fn = _impl("parallel", "parallel_attn", q)
    return fn(q, k, v, g=g, scale=scale, cu_seqlens=cu_seqlens, gc=gc, return_lse=return_lse)


def decode_attn(q, k_cache, v_cache, gc_cache=None, cache_seqlens=None, scale=None):
    fn = _impl("decoding", "decode_attn", q)
    return fn(q, k_cache, v_cache, gc_cache=gc_cache, cache_seqlens=cache_seqlens, scale=scale)


def update_cache(k_cache, v_cache, gc_cache, k, v, g, cache_seqlens):
    fn = _impl("decoding", "update_cache", k_cache)
    return fn(k_cache, v_cache, gc_cache, k, v, g, cache_seqlens)


def rebase_gate_cache(gc_cache, cache_seqlens):
    fn = _impl("decoding", "rebase_gate_cache", gc_cache)
    return fn(gc_cache, cache_seqlens)


# --- fused elementwise ops of the model (kernels/<op>/{naive.py, <module>.py}) -------------------------


def _fused_impl(op: str, module: str, name: str, tensor: torch.Tensor):
    """Triton ``kernels.<op>.<module>.<name>`` for CUDA tensors, ``kernels.<op>.naive.<name>`` otherwise.

    The fused Triton ops are inference kernels (no backward): under autograd (training) the
    reference runs, which torch differentiates.
    """
    needs_grad = torch.is_grad_enabled() and tensor.requires_grad
    if tensor.is_cuda and triton_available() and not needs_grad:
        return getattr(importlib.import_module(f"kernels.{op}.{module}"), name)
    return getattr(importlib.import_module(f"kernels.{op}.naive"), name)


def rms_norm(x, weight, eps, residual=None):
    return _fused_impl("norm", "rmsnorm", "rms_norm", x)(x, weight, eps, residual)


def swiglu(gate, up):
    return _fused_impl("glu", "swiglu", "swiglu", gate)(gate, up)


def apply_rope(q, k, cos, sin):
    return _fused_impl("rope", "rope", "apply_rope", q)(q, k, cos, sin)


def append_kv(k_cache, v_cache, gc_cache, k, v, f, cache_seqlens):
    return _fused_impl("gate", "gate", "append_kv", k_cache)(k_cache, v_cache, gc_cache, k, v, f, cache_seqlens)


# Rows up to which linear maps take the Triton skinny GEMM (decode steps); prefill stays on cuBLAS.
SKINNY_MAX_ROWS = 32
_SKINNY_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _skinny_ok(x, weight, bias) -> bool:
    """The Triton skinny GEMM takes it: CUDA, no autograd, at most SKINNY_MAX_ROWS rows, one supported
    dtype, contiguous weight rows, and GATEDGEN_NO_SKINNY unset."""
    K = x.shape[-1]
    grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad))
    return (x.is_cuda and not grad and 0 < x.numel() <= SKINNY_MAX_ROWS * K and x.dtype == weight.dtype
            and x.dtype in _SKINNY_DTYPES and weight.stride(-1) == 1 and triton_available()
            and os.environ.get("GATEDGEN_NO_SKINNY", "0") != "1")


def linear(x, weight, bias=None):
    """x @ weight^T + bias: the Triton skinny GEMM (kernels/gemm/skinny.py) for CUDA inputs of at most
    SKINNY_MAX_ROWS rows (M = x.numel() // K) without autograd, F.linear (cuBLAS) otherwise and
    everywhere when GATEDGEN_NO_SKINNY=1 (for comparisons)."""
    if _skinny_ok(x, weight, bias):
        return importlib.import_module("kernels.gemm.skinny").linear(x, weight, bias)
    return importlib.import_module("kernels.gemm.naive").linear(x, weight, bias)


def linear_swiglu(x, weight, inter, bias=None):
    """silu(gate) * up of one gate/up GEMM (weight [2 inter, K]: gate rows, then up rows) -> [..., inter]:
    the skinny GEMM with its SwiGLU epilogue where ``linear`` takes the skinny GEMM (one kernel);
    otherwise F.linear then ``swiglu`` (the Triton SwiGLU kernel on CUDA without autograd, the
    reference elsewhere: then exactly kernels.gemm.naive.linear_swiglu)."""
    if _skinny_ok(x, weight, bias):
        return importlib.import_module("kernels.gemm.skinny").linear_swiglu(x, weight, inter, bias)
    if weight.shape[0] != 2 * inter:
        raise ValueError(f"weight has {weight.shape[0]} rows, not 2 x {inter}")
    gate, up = importlib.import_module("kernels.gemm.naive").linear(x, weight, bias).split(inter, dim=-1)
    return swiglu(gate, up)


def rms_norm_linear(x, norm_weight, eps, weight, bias=None, residual=None, inter=None):
    """(y, h): h = x + residual (x without one), y = linear(rms_norm(h) * norm_weight, weight, bias), or with
    ``inter`` linear_swiglu(..., inter, bias). One kernel -- the skinny GEMM with the norm folded in
    (kernels/gemm/skinny.py) -- for one row (batch-1 decode) where ``linear`` takes the skinny GEMM and
    GATEDGEN_NO_NORM_FOLD is unset; otherwise ``rms_norm`` then ``linear`` / ``linear_swiglu`` (the two
    kernels of before; on CPU exactly kernels.gemm.naive.rms_norm_linear). More rows stay unfolded: on
    the H100 the fold cost the batch-32 decode step 4-5% (each program scales every row's tiles again),
    while it saves 8% at batch 1 (docs/notes-generate.md)."""
    grad = torch.is_grad_enabled() and (norm_weight.requires_grad
                                        or (residual is not None and residual.requires_grad))
    one_row = x.numel() == x.shape[-1]
    if (one_row and _skinny_ok(x, weight, bias) and not grad and os.environ.get("GATEDGEN_NO_NORM_FOLD", "0") != "1"
            and (residual is None or residual.dtype == x.dtype)):
        return importlib.import_module("kernels.gemm.skinny").rms_norm_linear(
            x, norm_weight, eps, weight, bias, residual, inter)
    n, h = rms_norm(x, norm_weight, eps, residual)
    return (linear(n, weight, bias) if inter is None else linear_swiglu(n, weight, inter, bias)), h
