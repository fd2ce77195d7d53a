"""Backward Triton kernels of gated causal attention in parallel form (preprocess, dk/dv, dq); the math
and the host side are in ``kernels.attn.parallel``."""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.attn.parallel_common import (
    causal_key_range,
    key_block_scores,
    load_gate,
    load_kv,
    load_query_rows,
    program_tile,
    row_ptrs,
    tile_ptrs,
)
from kernels.utils import LOG2E, dot


@triton.jit
def parallel_attn_bwd_kernel_preprocess(o, do, delta, N, K: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr):
    # delta_r = sum_d o_rd * do_rd for BR flattened rows (b, t, hq)
    i_r = tl.program_id(0).to(tl.int64)
    o_r = tl.arange(0, BR)
    o_d = tl.arange(0, BK)
    m_r = (i_r * BR + o_r) < N
    m = m_r[:, None] & (o_d < K)[None, :]
    p = i_r * BR * K + o_r[:, None] * K + o_d[None, :]
    b_o = tl.load(o + p, mask=m, other=0.0).to(tl.float32)
    b_do = tl.load(do + p, mask=m, other=0.0).to(tl.float32)
    tl.store(delta + i_r * BR + o_r, tl.sum(b_o * b_do, 1), mask=m_r)


@triton.jit
def _dkdv_block(q, do, gc, lse, delta, b_k, b_v, b_gk, b_dk, b_dv, b_dgk, i_t, i_hq, bos_q, bos_k, offset, TQ,
                o_k, qk_scale, HQ: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                USE_G: tl.constexpr, DOT_PREC: tl.constexpr, MASKED: tl.constexpr):
    """One query block [i_t, i_t + BT) of one query head against the program's key tile."""
    o_t = tl.arange(0, BT)
    o_d = tl.arange(0, BK)
    o_q = i_t + o_t
    m_q = o_q < TQ
    m_qd = m_q[:, None] & (o_d < K)[None, :]
    b_q, b_do, b_lse, b_delta = load_query_rows(q, do, lse, delta, bos_q + i_t, i_hq, o_t, o_d, m_q, m_qd, HQ, K)
    # [BS, BT] transposed scores s2_ji in base 2
    b_sT = dot(b_k, tl.trans(b_q), DOT_PREC) * qk_scale
    if USE_G:
        b_gq = load_gate(gc, bos_k + offset + i_t, i_hq, o_t, m_q, HQ, True)
        b_sT += b_gq[None, :] - b_gk[:, None]
    if MASKED:  # diagonal blocks: key j > query i gets probability 0
        b_sT = tl.where((offset + o_q)[None, :] >= o_k[:, None], b_sT, float("-inf"))
    # P^T_ji = exp2(s2_ij - lse2_i): the forward's normalized probabilities, recomputed
    b_pT = tl.math.exp2(b_sT - b_lse[None, :])
    b_dv += dot(b_pT.to(b_do.dtype), b_do, DOT_PREC)
    b_dpT = dot(b_v, tl.trans(b_do), DOT_PREC)
    b_dsT = b_pT * (b_dpT - b_delta[None, :])
    b_dk += dot(b_dsT.to(b_q.dtype), b_q, DOT_PREC)
    if USE_G:
        b_dgk -= tl.sum(b_dsT, 1)
    return b_dk, b_dv, b_dgk


@triton.jit(do_not_specialize=["TQ", "TK"])
def parallel_attn_bwd_kernel_dkdv(
    q,
    k,
    v,
    gc,
    lse,
    delta,
    do,
    dk,
    dv,
    dgc_k,
    cu_seqlens,
    chunk_indices,
    scale,
    TQ,
    TK,
    B: tl.constexpr,
    H: tl.constexpr,
    HQ: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BS: tl.constexpr,
    BK: tl.constexpr,
    USE_G: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    # axis 0 enumerates (key tile, batch x kv head); early key tiles see the most queries: first
    i_h, s0, bos_q, bos_k, TQ, TK, offset = program_tile(chunk_indices, cu_seqlens, TQ, TK, 0, B, H, BS, False,
                                                         IS_VARLEN)

    o_s = tl.arange(0, BS)
    o_d = tl.arange(0, BK)
    o_k = s0 + o_s
    m_k = o_k < TK
    m_d = o_d < K
    m_kd = m_k[:, None] & m_d[None, :]
    b_k, b_v = load_kv(k, v, bos_k + s0, i_h, o_s, o_d, m_kd, H, K)
    b_dk = tl.zeros([BS, BK], dtype=tl.float32)
    b_dv = tl.zeros([BS, BK], dtype=tl.float32)
    qk_scale = scale * LOG2E

    # query rows (indices into the TQ queries) that can see this tile: absolute position
    # offset + r >= s0. Blocks starting before s0 + BS - offset overlap the diagonal (masked);
    # blocks from i_unm on see every key of the tile (unmasked).
    i_lo = (tl.maximum(s0 - offset, 0) // BT) * BT
    i_unm = tl.minimum(((tl.maximum(s0 + BS - offset, 0) + BT - 1) // BT) * BT, TQ)

    for i_g in range(G):
        i_hq = i_h * G + i_g
        b_dgk = tl.zeros([BS], dtype=tl.float32)
        b_gk = tl.zeros([BS], dtype=tl.float32)
        if USE_G:
            b_gk = load_gate(gc, bos_k + s0, i_hq, o_s, m_k, HQ, True)
        # diagonal query blocks (causal mask), then the blocks that see every key of the tile
        for i_t in range(i_lo, i_unm, BT):
            b_dk, b_dv, b_dgk = _dkdv_block(
                q, do, gc, lse, delta, b_k, b_v, b_gk, b_dk, b_dv, b_dgk, i_t, i_hq, bos_q, bos_k, offset, TQ,
                o_k, qk_scale, HQ, K, BT, BK, USE_G, DOT_PREC, True)
        for i_t in range(i_unm, TQ, BT):
            b_dk, b_dv, b_dgk = _dkdv_block(
                q, do, gc, lse, delta, b_k, b_v, b_gk, b_dk, b_dv, b_dgk, i_t, i_hq, bos_q, bos_k, offset, TQ,
                o_k, qk_scale, HQ, K, BT, BK, USE_G, DOT_PREC, False)
        if USE_G:
            tl.store(row_ptrs(dgc_k, bos_k + s0, i_hq, o_s, HQ), b_dgk, mask=m_k)

    p_dk = tile_ptrs(dk, bos_k + s0, i_h, o_s, o_d, H, K)
    p_dv = tile_ptrs(dv, bos_k + s0, i_h, o_s, o_d, H, K)
    tl.store(p_dk, (b_dk * scale).to(p_dk.dtype.element_ty), mask=m_kd)
    tl.store(p_dv, b_dv.to(p_dv.dtype.element_ty), mask=m_kd)


@triton.jit
def _dq_block(k, v, gc, b_q, b_do, b_lse, b_delta, b_gq, b_dq, b_dgq, i_s, i_h, i_hq, bos_k, TK, o_qpos, qk_scale,
              H: tl.constexpr, HQ: tl.constexpr, K: tl.constexpr, BS: tl.constexpr, BK: tl.constexpr,
              USE_G: tl.constexpr, DOT_PREC: tl.constexpr, MASKED: tl.constexpr):
    """One key block [i_s, i_s + BS) against the program's query tile."""
    o_s = tl.arange(0, BS)
    o_d = tl.arange(0, BK)
    b_s, b_k, b_v = key_block_scores(k, v, gc, b_q, b_gq, i_s, i_h, i_hq, bos_k, TK, o_s, o_d, o_qpos, qk_scale, H,
                                     HQ, K, USE_G, DOT_PREC, MASKED, True)
    # P_ij = exp2(s2_ij - lse2_i): the forward's normalized probabilities
    b_p = tl.math.exp2(b_s - b_lse[:, None])
    b_dp = dot(b_do, tl.trans(b_v), DOT_PREC)
    b_ds = b_p * (b_dp - b_delta[:, None])
    b_dq += dot(b_ds.to(b_k.dtype), b_k, DOT_PREC)
    if USE_G:
        b_dgq += tl.sum(b_ds, 1)
    return b_dq, b_dgq


@triton.jit(do_not_specialize=["TQ", "TK", "NT"])
def parallel_attn_bwd_kernel_dq(
    q,
    k,
    v,
    gc,
    lse,
    delta,
    do,
    dq,
    dgc_k,
    dgc,
    cu_seqlens,
    chunk_indices,
    scale,
    TQ,
    TK,
    NT,
    B: tl.constexpr,
    H: tl.constexpr,
    HQ: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BS: tl.constexpr,
    BK: tl.constexpr,
    USE_G: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    # axis 0 enumerates (query tile, batch x head); the tiles with the most keys go first
    i_hq, t0, bos_q, bos_k, TQ, TK, offset = program_tile(chunk_indices, cu_seqlens, TQ, TK, NT, B, HQ, BT, True,
                                                          IS_VARLEN)
    i_h = i_hq // G

    o_t = tl.arange(0, BT)
    o_d = tl.arange(0, BK)
    m_t = (t0 + o_t) < TQ
    m_d = o_d < K
    m_td = m_t[:, None] & m_d[None, :]
    o_qpos = offset + t0 + o_t

    b_q, b_do, b_lse, b_delta = load_query_rows(q, do, lse, delta, bos_q + t0, i_hq, o_t, o_d, m_t, m_td, HQ, K)
    qk_scale = scale * LOG2E
    b_gq = tl.zeros([BT], dtype=tl.float32)
    b_dgq = tl.zeros([BT], dtype=tl.float32)
    if USE_G:
        b_gq = load_gate(gc, bos_k + offset + t0, i_hq, o_t, m_t, HQ, True)
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)

    # key blocks wholly before the tile's first query (no mask), then the diagonal blocks
    i_diag, i_end = causal_key_range(offset, t0, TK, BT, BS)
    for i_s in range(0, i_diag, BS):
        b_dq, b_dgq = _dq_block(k, v, gc, b_q, b_do, b_lse, b_delta, b_gq, b_dq, b_dgq, i_s, i_h, i_hq, bos_k, TK,
                                o_qpos, qk_scale, H, HQ, K, BS, BK, USE_G, DOT_PREC, False)
    for i_s in range(i_diag, i_end, BS):
        b_dq, b_dgq = _dq_block(k, v, gc, b_q, b_do, b_lse, b_delta, b_gq, b_dq, b_dgq, i_s, i_h, i_hq, bos_k, TK,
                                o_qpos, qk_scale, H, HQ, K, BS, BK, USE_G, DOT_PREC, True)

    p_dq = tile_ptrs(dq, bos_q + t0, i_hq, o_t, o_d, HQ, K)
    tl.store(p_dq, (b_dq * scale).to(p_dq.dtype.element_ty), mask=m_td)
    if USE_G:
        p_g = (bos_k + offset + t0) * HQ + i_hq + o_t * HQ
        b_dgk = tl.load(dgc_k + p_g, mask=m_t, other=0.0)
        tl.store(dgc + p_g, b_dgk + b_dgq, mask=m_t)
