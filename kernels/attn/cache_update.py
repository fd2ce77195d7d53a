"""Triton KV-cache writes of the decode path: the append of new tokens (with their gates' running sums)
and the re-basing of the running sums. Semantics as ``update_cache`` and ``rebase_gate_cache`` in
``naive.py``; the kernels are in ``decoding_kernels.py`` and the design notes in ``decoding.py``."""

from __future__ import annotations

import torch

from kernels.attn.decoding_kernels import append_kv_kernel, rebase_gate_kernel
from kernels.utils import cdiv, check_gate_cache, next_power_of_2, pdl_enabled, pdl_launch

# cache append: tokens per program (None = one BT-token tile each, many programs for a long prompt;
# a large value gives the old one-program-per-(b, KV head) walk, kept for the bench)
APPEND_CHUNK: int | None = None


def _rows_ok(t: torch.Tensor, D: int) -> bool:
    return t.stride(-1) == 1 and t.stride(-2) == D


def append_kv(
    k_cache: torch.Tensor,  # [B, Tmax, H, D]
    v_cache: torch.Tensor,  # [B, Tmax, H, D]
    gc_cache: torch.Tensor | None,  # [B, Tmax, HQ] fp32 contiguous
    k: torch.Tensor,  # [B, Tn, H, D], may be a strided view
    v: torch.Tensor,  # [B, Tn, H, D], may be a strided view
    gates: torch.Tensor | None,  # [B, Tn, HQ] log gates, or forget-gate logits when ``logits``
    cache_seqlens: torch.Tensor,  # int32 [B]
    *,
    logits: bool,
    block_t: int | None = None,
    chunk: int | None = None,
    block_p: int | None = None,
) -> None:
    """One launch appends Tn new tokens per sequence at cache_seqlens[b] .. + Tn - 1 and continues the
    gates' running sums (``update_cache``; with ``logits`` the fused forget gate, kernels/gate).
    Tokens that would land past Tmax are dropped (checking would need a host synchronisation).

    Grid (cdiv(Tn, chunk), B, H): a program copies ``chunk`` tokens (default APPEND_CHUNK, else one
    tile of ``block_t``) and starts its running sums from the sum of the earlier tokens' gates, which
    it recomputes ``block_p`` tokens at a time; a decode step (Tn = 1) is one program per (b, KV head)."""
    B, Tn, H, D = k.shape
    Tmax = k_cache.shape[1]
    if k_cache.shape != (B, Tmax, H, D) or v_cache.shape != k_cache.shape or v.shape != k.shape:
        raise ValueError(f"k {tuple(k.shape)}, v {tuple(v.shape)} and caches {tuple(k_cache.shape)} disagree")
    if not (_rows_ok(k_cache, D) and _rows_ok(v_cache, D)):
        raise ValueError("k_cache / v_cache need contiguous [H, D] rows")
    if not _rows_ok(k, D):
        k = k.contiguous()
    if not _rows_ok(v, D):
        v = v.contiguous()
    use_g = gc_cache is not None
    if use_g:
        HQ = check_gate_cache(gc_cache, gates, B, Tmax, Tn, "f (gate logits)" if logits else "g")
        if gates.stride(-1) != 1:
            gates = gates.contiguous()
        sgb, sgt = gates.stride(0), gates.stride(1)
    else:
        HQ, sgb, sgt, gates = H, 0, 0, k
    if Tn == 0 or B == 0:
        return
    BT = block_t or min(32, max(16, next_power_of_2(Tn)))
    chunk = chunk or APPEND_CHUNK or BT
    chunk = cdiv(min(chunk, Tn), BT) * BT  # whole tiles
    BG = max(2, next_power_of_2(HQ // H))
    pdl = pdl_enabled(k_cache.device)
    append_kv_kernel[(cdiv(Tn, chunk), B, H)](
        k_cache, v_cache, gc_cache, k, v, gates, cache_seqlens,
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), sgb, sgt,
        Tmax, Tn, chunk,
        H=H, HQ=HQ, G=HQ // H, D=D,
        BT=BT, BP=block_p or max(BT, 4096 // BG), BD=max(16, next_power_of_2(D)),
        BG=BG, USE_G=use_g, LOGITS=logits, USE_PDL=pdl, num_warps=4, **pdl_launch(pdl),
    )


def update_cache(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    gc_cache: torch.Tensor | None,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    cache_seqlens: torch.Tensor,
) -> None:
    """Append Tn new tokens per sequence in place, one launch (see naive.update_cache).

    k, v [B, Tn, H, D] go to positions cache_seqlens[b] .. + Tn - 1; gc_cache[b, L + t] =
    gc_cache[b, L - 1] + cumsum(g[b])[t] (0 before the first token). cache_seqlens is not modified.
    """
    append_kv(k_cache, v_cache, gc_cache, k, v, g, cache_seqlens, logits=False)


def rebase_gate_cache(gc_cache: torch.Tensor, cache_seqlens: torch.Tensor) -> None:
    """Subtract each sequence's newest running sum (per head) from all its valid entries, in place.

    Exact for every score (they use differences only); keeps the recent entries near 0 where fp32
    resolves them finely. One launch, no host synchronisation.
    """
    B, Tmax, HQ = gc_cache.shape
    if gc_cache.dtype != torch.float32 or not gc_cache.is_contiguous():
        raise ValueError("gc_cache must be contiguous fp32 [B, Tmax, HQ]")
    BH = min(8, next_power_of_2(HQ))
    rebase_gate_kernel[(B, cdiv(HQ, BH))](gc_cache, cache_seqlens, Tmax, HQ=HQ, BT=256, BH=BH, num_warps=4)
