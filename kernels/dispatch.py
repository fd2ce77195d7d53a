"""Pick the Triton kernel for CUDA tensors and the reference otherwise.

The Triton modules are imported lazily so that a CPU-only install without Triton still works.
"""

from __future__ import annotations

import functools
import importlib

import torch

from kernels.attn import naive


@functools.cache
def triton_available() -> bool:
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return torch.cuda.is_available()


def _impl(module: str, name: str, tensor: torch.Tensor):
    if tensor.is_cuda and triton_available():
        try:
            mod = importlib.import_module(f"kernels.attn.{module}")
        except ImportError:
            mod = None
        if mod is not None and hasattr(mod, name):
            return getattr(mod, name)
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
