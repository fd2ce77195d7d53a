"""Triton forget gate fused with the KV-cache append (same semantics as ``naive.append_kv``).

Program (b, h) copies the Tn new keys/values of KV head h of sequence b to positions L .. L + Tn - 1
(L = cache_seqlens[b], read on the device) and, for its G query heads, turns the raw gate logits
into log gates, g = logsigmoid(f) = min(f, 0) - log(1 + exp(-|f|)), and continues their running
sum from gc[L - 1] (0 for an empty sequence) in blocks of BT tokens. One launch replaces the eager
``logsigmoid``, the fp32 cast and the cache append; k, v and f may be strided views (the pieces of
one fused q/k/v/f projection). No host synchronisation: safe inside a CUDA graph. Tokens that would
land past Tmax are dropped, as in ``kernels.attn.decoding.update_cache``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels.utils import check_gate_cache, next_power_of_2

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def append_kv_kernel(
    k_cache, v_cache, gc_cache, k, v, f, cache_seqlens,
    stride_kcb, stride_kct, stride_vcb, stride_vct,
    stride_kb, stride_kt, stride_vb, stride_vt, stride_fb, stride_ft,
    Tmax, TN,
    H: tl.constexpr, HQ: tl.constexpr, G: tl.constexpr, D: tl.constexpr,
    BT: tl.constexpr, BD: tl.constexpr, BG: tl.constexpr, USE_G: tl.constexpr,
):
    i_b, i_h = tl.program_id(0), tl.program_id(1)
    L = tl.load(cache_seqlens + i_b).to(tl.int32)
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    i_b64 = i_b.to(tl.int64)
    p_kc = k_cache + i_b64 * stride_kcb + i_h * D
    p_vc = v_cache + i_b64 * stride_vcb + i_h * D
    p_k = k + i_b64 * stride_kb + i_h * D
    p_v = v + i_b64 * stride_vb + i_h * D
    # while loops: the CPU interpreter cannot take a run-time value as a range() bound
    i_t = 0
    while i_t < TN:
        o_t = i_t + tl.arange(0, BT)
        m_t = (o_t < TN) & (L + o_t < Tmax)
        m_td = m_t[:, None] & m_d[None, :]
        o_t64 = o_t.to(tl.int64)[:, None]
        o_dst = (L + o_t).to(tl.int64)[:, None]
        b_k = tl.load(p_k + o_t64 * stride_kt + o_d[None, :], mask=m_td, other=0.0)
        b_v = tl.load(p_v + o_t64 * stride_vt + o_d[None, :], mask=m_td, other=0.0)
        tl.store(p_kc + o_dst * stride_kct + o_d[None, :], b_k.to(k_cache.dtype.element_ty), mask=m_td)
        tl.store(p_vc + o_dst * stride_vct + o_d[None, :], b_v.to(v_cache.dtype.element_ty), mask=m_td)
        i_t += BT
    if USE_G:
        o_g = tl.arange(0, BG)
        m_g = o_g < G
        i_hq = i_h * G + o_g
        p_gc = gc_cache + i_b64 * Tmax * HQ + i_hq
        b_base = tl.load(p_gc + (L - 1) * HQ, mask=m_g & (L > 0), other=0.0)
        i_t = 0
        while i_t < TN:
            o_t = i_t + tl.arange(0, BT)
            m_t = o_t < TN
            m_tg = m_t[:, None] & m_g[None, :]
            b_f = tl.load(f + i_b64 * stride_fb + o_t.to(tl.int64)[:, None] * stride_ft + i_hq[None, :],
                          mask=m_tg, other=0.0).to(tl.float32)
            b_g = tl.minimum(b_f, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(b_f)))
            b_g = tl.where(m_tg, b_g, 0.0)
            b_c = tl.cumsum(b_g, 0)
            m_st = (m_t & (L + o_t < Tmax))[:, None] & m_g[None, :]
            tl.store(p_gc[None, :] + (L + o_t)[:, None] * HQ, b_base[None, :] + b_c, mask=m_st)
            b_base = b_base + tl.sum(b_g, 0)
            i_t += BT


def _rows_ok(t: torch.Tensor, D: int) -> bool:
    return t.stride(-1) == 1 and t.stride(-2) == D


def append_kv(
    k_cache: torch.Tensor,  # [B, Tmax, H, D]
    v_cache: torch.Tensor,  # [B, Tmax, H, D]
    gc_cache: torch.Tensor | None,  # [B, Tmax, HQ] fp32 contiguous
    k: torch.Tensor,  # [B, Tn, H, D]
    v: torch.Tensor,  # [B, Tn, H, D]
    f: torch.Tensor | None,  # [B, Tn, HQ] forget-gate logits
    cache_seqlens: torch.Tensor,  # int32 [B]
) -> None:
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
        HQ = check_gate_cache(gc_cache, f, B, Tmax, Tn, "f (gate logits)")
        if f.stride(-1) != 1:
            f = f.contiguous()
        sfb, sft = f.stride(0), f.stride(1)
    else:
        HQ, sfb, sft, f = H, 0, 0, k
    if Tn == 0 or B == 0:
        return
    append_kv_kernel[(B, H)](
        k_cache, v_cache, gc_cache, k, v, f, cache_seqlens,
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), sfb, sft,
        Tmax, Tn,
        H=H, HQ=HQ, G=HQ // H, D=D,
        BT=min(64, max(16, next_power_of_2(Tn))), BD=max(16, next_power_of_2(D)),
        BG=max(2, next_power_of_2(HQ // H)), USE_G=use_g, num_warps=4,
    )
