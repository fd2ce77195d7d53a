"""Forward Triton kernel of gated causal attention in parallel form; the math and the host side are in
``kernels.attn.parallel``."""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.utils import LN2, LOG2E, dot, tile_rows


@triton.jit
def _online_softmax_step(b_s, b_v, b_m, b_l, b_o, DOT_PREC: tl.constexpr):
    """Fold one key block's base-2 scores b_s [BT, BS] into the running max b_m, sum b_l and output
    accumulator b_o: rescale the old sum and accumulator by exp2(m_old - m_new)."""
    b_mn = tl.maximum(b_m, tl.max(b_s, 1))
    b_r = tl.math.exp2(b_m - b_mn)
    b_p = tl.math.exp2(b_s - b_mn[:, None])
    b_l = b_l * b_r + tl.sum(b_p, 1)
    b_o = b_o * b_r[:, None] + dot(b_p.to(b_v.dtype), b_v, DOT_PREC)
    return b_mn, b_l, b_o


@triton.jit(do_not_specialize=["TQ", "TK", "NT"])
def parallel_attn_fwd_kernel(
    q,
    k,
    v,
    o,
    gc,
    lse,
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
    i_p = tl.program_id(0).to(tl.int64)
    i_bh = i_p % (B * HQ)
    if not IS_VARLEN:
        NT = tl.cdiv(TQ, BT)
    i_t = NT - 1 - i_p // (B * HQ)
    i_b, i_hq = i_bh // HQ, i_bh % HQ
    i_h = i_hq // G
    i_t, bos_q, bos_k, TQ, TK = tile_rows(chunk_indices, cu_seqlens, i_t, i_b, TQ, TK, IS_VARLEN)
    # queries are the last TQ of TK positions: query row r sits at absolute position offset + r
    offset = TK - TQ
    t0 = i_t * BT

    o_t = tl.arange(0, BT)
    o_s = tl.arange(0, BS)
    o_d = tl.arange(0, BK)
    m_t = (t0 + o_t) < TQ
    m_d = o_d < K
    # absolute positions of this tile's queries (int64 scalar + small int32 vector)
    o_qpos = offset + t0 + o_t

    p_q = q + ((bos_q + t0) * HQ + i_hq) * K + o_t[:, None] * (HQ * K) + o_d[None, :]
    b_q = tl.load(p_q, mask=m_t[:, None] & m_d[None, :], other=0.0)
    qk_scale = scale * LOG2E

    if USE_G:
        p_gq = gc + (bos_k + offset + t0) * HQ + i_hq + o_t * HQ
        b_gq = tl.load(p_gq, mask=m_t, other=0.0).to(tl.float32) * LOG2E

    b_m = tl.full([BT], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([BT], dtype=tl.float32)
    b_o = tl.zeros([BT, BK], dtype=tl.float32)

    # keys [0, i_diag) precede every query of the tile: no causal mask, no bounds mask on rows
    i_diag = ((offset + t0) // BS) * BS
    i_end = tl.minimum(offset + t0 + BT, TK)
    for i_s in range(0, i_diag, BS):
        p_k = k + ((bos_k + i_s) * H + i_h) * K + o_s[:, None] * (H * K) + o_d[None, :]
        p_v = v + ((bos_k + i_s) * H + i_h) * K + o_s[:, None] * (H * K) + o_d[None, :]
        b_k = tl.load(p_k, mask=m_d[None, :], other=0.0)
        b_v = tl.load(p_v, mask=m_d[None, :], other=0.0)
        # [BT, BS] scores in base 2
        b_s = dot(b_q, tl.trans(b_k), DOT_PREC) * qk_scale
        if USE_G:
            b_gk = tl.load(gc + (bos_k + i_s) * HQ + i_hq + o_s * HQ).to(tl.float32) * LOG2E
            b_s += b_gq[:, None] - b_gk[None, :]
        b_m, b_l, b_o = _online_softmax_step(b_s, b_v, b_m, b_l, b_o, DOT_PREC)

    # keys [i_diag, i_end) overlap the diagonal: mask j > i and keys beyond TK.
    # every row keeps key i_diag <= its own position, so no row is all -inf after the first block.
    for i_s in range(i_diag, i_end, BS):
        o_k = i_s + o_s
        m_k = o_k < TK
        p_k = k + ((bos_k + i_s) * H + i_h) * K + o_s[:, None] * (H * K) + o_d[None, :]
        p_v = v + ((bos_k + i_s) * H + i_h) * K + o_s[:, None] * (H * K) + o_d[None, :]
        b_k = tl.load(p_k, mask=m_k[:, None] & m_d[None, :], other=0.0)
        b_v = tl.load(p_v, mask=m_k[:, None] & m_d[None, :], other=0.0)
        b_s = dot(b_q, tl.trans(b_k), DOT_PREC) * qk_scale
        if USE_G:
            b_gk = tl.load(gc + (bos_k + i_s) * HQ + i_hq + o_s * HQ, mask=m_k, other=0.0).to(tl.float32) * LOG2E
            b_s += b_gq[:, None] - b_gk[None, :]
        b_s = tl.where((o_qpos[:, None] >= o_k[None, :]) & m_k[None, :], b_s, float("-inf"))
        b_m, b_l, b_o = _online_softmax_step(b_s, b_v, b_m, b_l, b_o, DOT_PREC)

    b_o = b_o / b_l[:, None]
    # natural-log lse = (m2 + log2 l) * ln 2
    b_lse = (b_m + tl.math.log2(b_l)) * LN2
    p_o = o + ((bos_q + t0) * HQ + i_hq) * K + o_t[:, None] * (HQ * K) + o_d[None, :]
    tl.store(p_o, b_o.to(p_o.dtype.element_ty), mask=m_t[:, None] & m_d[None, :])
    tl.store(lse + (bos_q + t0) * HQ + i_hq + o_t * HQ, b_lse, mask=m_t)
