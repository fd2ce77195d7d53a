"""Backward Triton kernels of gated causal attention in parallel form (preprocess, dk/dv, dq); the math
and the host side are in ``kernels.attn.parallel``.

The per-query values the inner loops read (base-2 lse, delta, and the base-2 gate sums of queries and
keys) come as per-head rows [B * HQ, TP]: contiguous along time, padded to 16 columns. The loop-loaded
tiles (q and do in dk/dv, k and v in dq) come through TMA descriptors where the host made them
(``USE_TMA``), else through masked pointer loads.

Scores in base 2 minus the row's lse, e_ij = c q_i.k_j + gq_i - gk_j - lse_i (c = scale log2 e), so
that P_ij = exp2(e_ij):

* blocks where every query sees every key (unmasked): e_ij = c q_i.k_j + a_i - b_j with a [BT] vector
  a_i = gq_i - g_ref - lse_i and a [BS] vector b_j = gk_j - g_ref taken once, g_ref the gate sum of a
  key every query of the block sees (dk/dv: the tile's last key; dq: the tile's first query). Since
  lse_i >= e of that key, a_i is at most about |c q.k|, and b_j >= 0: where either is large, P is 0,
  so their rounding never reaches a probability that counts.
* diagonal blocks keep the per-pair form c q_i.k_j + (gq_i - gk_j) - lse_i, exact when a gate inside
  the block forgets everything (gate sums of 1e4 whose difference is small).
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.attn.parallel_common import (
    causal_key_range,
    head_row,
    head_row_origin,
    load_tile_pair,
    program_tile,
    row_ptrs,
    tile_ptrs,
)
from kernels.utils import LOG2E, dot


@triton.jit(do_not_specialize=["TQ", "NBH"])
def parallel_attn_bwd_kernel_preprocess(o, do, lse, deltat, lset, TQ, TQP, NBH, HQ: tl.constexpr, K: tl.constexpr,
                                        BR: tl.constexpr, BK: tl.constexpr):
    """Per-head rows of BR queries of one (batch, head): delta_i = sum_d o_id do_id and the base-2 lse,
    into deltat / lset [B * HQ, TQP] (packed sequences: B = 1, TQ = all tokens)."""
    i_p = tl.program_id(0).to(tl.int64)
    i_bh, i_r = i_p % NBH, i_p // NBH
    i_b, i_hq = i_bh // HQ, i_bh % HQ
    o_r = i_r * BR + tl.arange(0, BR)
    o_d = tl.arange(0, BK)
    m_r = o_r < TQ
    m = m_r[:, None] & (o_d < K)[None, :]
    b_o = tl.load(tile_ptrs(o, i_b * TQ, i_hq, o_r, o_d, HQ, K), mask=m, other=0.0).to(tl.float32)
    b_do = tl.load(tile_ptrs(do, i_b * TQ, i_hq, o_r, o_d, HQ, K), mask=m, other=0.0).to(tl.float32)
    b_lse = tl.load(row_ptrs(lse, i_b * TQ, i_hq, o_r, HQ), mask=m_r, other=0.0)
    tl.store(deltat + i_bh * TQP + o_r, tl.sum(b_o * b_do, 1), mask=m_r)
    tl.store(lset + i_bh * TQP + o_r, b_lse * LOG2E, mask=m_r)


@triton.jit
def _dkdv_block(q, do, desc_q, desc_do, lset, deltat, gct, b_k, b_v, b_gk, b_gkr, b_gref, b_dk, b_dv, b_dgk, i_t,
                i_hq, bos_q, r_g, c_q0, c_k0, TQP, TKP, offset, TQ, o_k, qk_scale, HQ: tl.constexpr,
                K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, USE_G: tl.constexpr, USE_TMA: tl.constexpr,
                DOT_PREC: tl.constexpr, MASKED: tl.constexpr):
    """One query block [i_t, i_t + BT) of query head i_hq against the program's key tile. Unmasked
    blocks lie wholly inside TQ and after the tile; MASKED ones overlap the diagonal or end the
    sequence (causal mask, rows past TQ)."""
    o_t = tl.arange(0, BT)
    o_d = tl.arange(0, BK)
    o_q = i_t + o_t
    m_q = o_q < TQ
    b_q, b_do = load_tile_pair(q, do, desc_q, desc_do, bos_q + i_t, i_hq, o_t, o_d, m_q, HQ, K, USE_TMA, MASKED,
                               True)
    # rows past TQ: lse = +inf, so their probabilities are exactly 0
    b_lse = head_row(lset, r_g, TQP, c_q0 + i_t, o_t, m_q, float("inf"), MASKED)
    b_delta = head_row(deltat, r_g, TQP, c_q0 + i_t, o_t, m_q, 0.0, MASKED)
    # [BS, BT] transposed base-2 scores minus lse: e_ji = s2_ij - lse2_i
    b_qk = dot(b_k, tl.trans(b_q), DOT_PREC)
    if USE_G:
        b_gq = head_row(gct, r_g, TKP, c_k0 + offset + i_t, o_t, m_q, 0.0, MASKED)
        if MASKED:
            b_eT = b_qk * qk_scale + (b_gq[None, :] - b_gk[:, None]) - b_lse[None, :]
        else:
            b_eT = b_qk * qk_scale + (b_gq - b_gref - b_lse)[None, :] - b_gkr[:, None]
    else:
        b_eT = b_qk * qk_scale - b_lse[None, :]
    if MASKED:  # key j > query i gets probability 0
        b_eT = tl.where((offset + o_q)[None, :] >= o_k[:, None], b_eT, float("-inf"))
    # P^T_ji = exp2(s2_ij - lse2_i): the forward's normalized probabilities, recomputed
    b_pT = tl.math.exp2(b_eT)
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
    lset,
    deltat,
    gct,
    do,
    dk,
    dv,
    dgc_k,
    cu_seqlens,
    chunk_indices,
    desc_q,
    desc_do,
    scale,
    TQ,
    TK,
    TQP,
    TKP,
    B: tl.constexpr,
    H: tl.constexpr,
    HQ: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BS: tl.constexpr,
    BK: tl.constexpr,
    USE_G: tl.constexpr,
    USE_TMA: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    # axis 0 enumerates (key tile, batch x kv head); early key tiles see the most queries: first
    i_h, s0, bos_q, bos_k, TQ, TK, offset = program_tile(chunk_indices, cu_seqlens, TQ, TK, 0, B, H, BS, False,
                                                         IS_VARLEN, 0)

    o_s = tl.arange(0, BS)
    o_d = tl.arange(0, BK)
    o_k = s0 + o_s
    m_k = o_k < TK
    m_kd = m_k[:, None] & (o_d < K)[None, :]
    b_k, b_v = load_tile_pair(k, v, None, None, bos_k + s0, i_h, o_s, o_d, m_k, H, K, False, True, True)
    b_dk = tl.zeros([BS, BK], dtype=tl.float32)
    b_dv = tl.zeros([BS, BK], dtype=tl.float32)
    qk_scale = scale * LOG2E

    # query rows (indices into the TQ queries) that can see this tile: absolute position
    # offset + r >= s0. Blocks starting before s0 + BS - offset overlap the diagonal (masked);
    # blocks from i_unm on see every key of the tile (unmasked) and, up to the last whole block
    # i_mid, lie inside TQ; the partial block after them is masked for its rows past TQ.
    i_lo = (tl.maximum(s0 - offset, 0) // BT) * BT
    i_unm = tl.minimum(((tl.maximum(s0 + BS - offset, 0) + BT - 1) // BT) * BT, TQ)
    i_mid = tl.maximum(i_unm, (TQ // BT) * BT)

    for i_g in range(G):
        i_hq = i_h * G + i_g
        r_g, c_q0, c_k0 = head_row_origin(bos_q, bos_k, TK, i_hq, HQ, IS_VARLEN)
        b_dgk = tl.zeros([BS], dtype=tl.float32)
        b_gk = tl.zeros([BS], dtype=tl.float32)
        b_gkr = tl.zeros([BS], dtype=tl.float32)
        b_gref = 0.0
        if USE_G:
            b_gk = head_row(gct, r_g, TKP, c_k0 + s0, o_s, m_k, 0.0, True)
            # the gate sum of the tile's last key: every query of an unmasked block sees it
            b_gref = head_row(gct, r_g, TKP, c_k0 + tl.minimum(s0 + BS, TK) - 1, 0, None, 0.0, False)
            b_gkr = b_gk - b_gref
        for i_t in range(i_lo, i_unm, BT):
            b_dk, b_dv, b_dgk = _dkdv_block(
                q, do, desc_q, desc_do, lset, deltat, gct, b_k, b_v, b_gk, b_gkr, b_gref, b_dk, b_dv, b_dgk, i_t,
                i_hq, bos_q, r_g, c_q0, c_k0, TQP, TKP, offset, TQ, o_k, qk_scale, HQ, K, BT, BK, USE_G, USE_TMA,
                DOT_PREC, True)
        for i_t in range(i_unm, i_mid, BT):
            b_dk, b_dv, b_dgk = _dkdv_block(
                q, do, desc_q, desc_do, lset, deltat, gct, b_k, b_v, b_gk, b_gkr, b_gref, b_dk, b_dv, b_dgk, i_t,
                i_hq, bos_q, r_g, c_q0, c_k0, TQP, TKP, offset, TQ, o_k, qk_scale, HQ, K, BT, BK, USE_G, USE_TMA,
                DOT_PREC, False)
        for i_t in range(i_mid, TQ, BT):
            b_dk, b_dv, b_dgk = _dkdv_block(
                q, do, desc_q, desc_do, lset, deltat, gct, b_k, b_v, b_gk, b_gkr, b_gref, b_dk, b_dv, b_dgk, i_t,
                i_hq, bos_q, r_g, c_q0, c_k0, TQP, TKP, offset, TQ, o_k, qk_scale, HQ, K, BT, BK, USE_G, USE_TMA,
                DOT_PREC, True)
        if USE_G:
            tl.store(row_ptrs(dgc_k, bos_k + s0, i_hq, o_s, HQ), b_dgk, mask=m_k)

    p_dk = tile_ptrs(dk, bos_k + s0, i_h, o_s, o_d, H, K)
    p_dv = tile_ptrs(dv, bos_k + s0, i_h, o_s, o_d, H, K)
    tl.store(p_dk, (b_dk * scale).to(p_dk.dtype.element_ty), mask=m_kd)
    tl.store(p_dv, b_dv.to(p_dv.dtype.element_ty), mask=m_kd)


@triton.jit
def _dq_block(k, v, desc_k, desc_v, gct, b_q, b_do, b_lse, b_delta, b_gq, b_a, b_g0, b_dq, b_dgq, i_s, i_h, bos_k,
              r_g, c_k0, TKP, TK, o_qpos, qk_scale, H: tl.constexpr, K: tl.constexpr, BS: tl.constexpr,
              BK: tl.constexpr, USE_G: tl.constexpr, USE_TMA: tl.constexpr, DOT_PREC: tl.constexpr,
              MASKED: tl.constexpr):
    """One key block [i_s, i_s + BS) against the program's query tile. Unmasked blocks lie wholly
    before the tile (and inside TK); MASKED ones overlap the diagonal (causal mask, keys past TK)."""
    o_s = tl.arange(0, BS)
    o_d = tl.arange(0, BK)
    o_k = i_s + o_s
    m_k = o_k < TK
    # (TMA: masked blocks zero k and v past the sequence, since dS @ k would turn inf into NaN)
    b_k, b_v = load_tile_pair(k, v, desc_k, desc_v, bos_k + i_s, i_h, o_s, o_d, m_k, H, K, USE_TMA, MASKED, True)
    b_qk = dot(b_q, tl.trans(b_k), DOT_PREC)
    # [BT, BS] base-2 scores minus lse: e_ij = s2_ij - lse2_i
    if MASKED:
        if USE_G:
            b_gk = head_row(gct, r_g, TKP, c_k0 + i_s, o_s, m_k, 0.0, True)
            b_e = b_qk * qk_scale + (b_gq[:, None] - b_gk[None, :]) - b_lse[:, None]
        else:
            b_e = b_qk * qk_scale - b_lse[:, None]
        b_e = tl.where((o_qpos[:, None] >= o_k[None, :]) & m_k[None, :], b_e, float("-inf"))
    else:
        b_e = b_qk * qk_scale + b_a[:, None]
        if USE_G:
            b_e -= (head_row(gct, r_g, TKP, c_k0 + i_s, o_s, m_k, 0.0, False) - b_g0)[None, :]
    # P_ij = exp2(s2_ij - lse2_i): the forward's normalized probabilities
    b_p = tl.math.exp2(b_e)
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
    lset,
    deltat,
    gct,
    do,
    dq,
    dgc_k,
    dgc,
    cu_seqlens,
    chunk_indices,
    desc_k,
    desc_v,
    scale,
    TQ,
    TK,
    NT,
    TQP,
    TKP,
    B: tl.constexpr,
    H: tl.constexpr,
    HQ: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BS: tl.constexpr,
    BK: tl.constexpr,
    USE_G: tl.constexpr,
    USE_TMA: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    # axis 0 enumerates (query tile, batch x head); the tiles with the most keys go first
    i_hq, t0, bos_q, bos_k, TQ, TK, offset = program_tile(chunk_indices, cu_seqlens, TQ, TK, NT, B, HQ, BT, True,
                                                          IS_VARLEN, 0)
    i_h = i_hq // G
    r_g, c_q0, c_k0 = head_row_origin(bos_q, bos_k, TK, i_hq, HQ, IS_VARLEN)

    o_t = tl.arange(0, BT)
    o_d = tl.arange(0, BK)
    m_t = (t0 + o_t) < TQ
    m_td = m_t[:, None] & (o_d < K)[None, :]
    o_qpos = offset + t0 + o_t

    b_q, b_do = load_tile_pair(q, do, None, None, bos_q + t0, i_hq, o_t, o_d, m_t, HQ, K, False, True, True)
    # rows past TQ: lse = +inf, so their probabilities are exactly 0
    b_lse = head_row(lset, r_g, TQP, c_q0 + t0, o_t, m_t, float("inf"), True)
    b_delta = head_row(deltat, r_g, TQP, c_q0 + t0, o_t, m_t, 0.0, True)
    qk_scale = scale * LOG2E
    b_gq = tl.zeros([BT], dtype=tl.float32)
    b_g0 = 0.0
    b_a = -b_lse
    if USE_G:
        b_gq = head_row(gct, r_g, TKP, c_k0 + offset + t0, o_t, m_t, 0.0, True)
        # the gate sum of the tile's first query: every key of an unmasked block precedes it
        b_g0 = head_row(gct, r_g, TKP, c_k0 + offset + t0, 0, None, 0.0, False)
        b_a = b_gq - b_g0 - b_lse
    b_dgq = tl.zeros([BT], dtype=tl.float32)
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)

    # key blocks wholly before the tile's first query (no mask), then the diagonal blocks
    i_diag, i_end = causal_key_range(offset, t0, TK, BT, BS)
    for i_s in range(0, i_diag, BS):
        b_dq, b_dgq = _dq_block(k, v, desc_k, desc_v, gct, b_q, b_do, b_lse, b_delta, b_gq, b_a, b_g0, b_dq, b_dgq,
                                i_s, i_h, bos_k, r_g, c_k0, TKP, TK, o_qpos, qk_scale, H, K, BS, BK, USE_G, USE_TMA,
                                DOT_PREC, False)
    for i_s in range(i_diag, i_end, BS):
        b_dq, b_dgq = _dq_block(k, v, desc_k, desc_v, gct, b_q, b_do, b_lse, b_delta, b_gq, b_a, b_g0, b_dq, b_dgq,
                                i_s, i_h, bos_k, r_g, c_k0, TKP, TK, o_qpos, qk_scale, H, K, BS, BK, USE_G, USE_TMA,
                                DOT_PREC, True)

    p_dq = tile_ptrs(dq, bos_q + t0, i_hq, o_t, o_d, HQ, K)
    tl.store(p_dq, (b_dq * scale).to(p_dq.dtype.element_ty), mask=m_td)
    if USE_G:
        p_g = row_ptrs(dgc_k, bos_k + offset + t0, i_hq, o_t, HQ)
        b_dgk = tl.load(p_g, mask=m_t, other=0.0)
        tl.store(row_ptrs(dgc, bos_k + offset + t0, i_hq, o_t, HQ), b_dgk + b_dgq, mask=m_t)
