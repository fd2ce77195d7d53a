"""Forward Triton kernel of gated causal attention in parallel form; the math and the host side are in
``kernels.attn.parallel``.

Two representations of a row's base-2 scores (s2_ij = c q_i.k_j + gq_i - gk_j, c = scale log2 e, gq/gk
the running gate sums of query i / key j in base 2) keep the inner loop as cheap as ungated attention:

* key blocks wholly before the tile (most of them): the row constant gq_i is dropped, since softmax
  does not see it. With g0 = gq of the tile's first query, s'_ij = c q_i.k_j - (gk_j - g0): one FMA
  per score (gk_j - g0 >= 0 is a [BS] vector per block). The running max m' is kept in this shifted
  representation (m' = m - (gq_i - g0)).
* the blocks over the diagonal: gq_i - g0 is added back to m once (l and o are relative to m and do
  not change), and the scores take the per-row form c q_i.k_j + (gq_i - g0) - (gk_j - g0), which stays
  exact when a gate inside the tile forgets everything (a drop of 1e4 between two queries of the tile
  would otherwise leave fp32 scores near 1e4, with 1e-3 absolute rounding).

Ungated rows take the row max of the raw products and scale it (c > 0), so that the probabilities are
one FMA and one exp2 per score. K/V come through TMA tensor descriptors when the head dim is a power of
two and the dtype 16-bit (``USE_TMA``), else through masked pointer loads. The unmasked blocks read the
keys' gate sums from a per-head copy [B * HQ, Tk] (``GATE_T = 1``, contiguous) or from the [B, T, HQ]
running sums (``GATE_T = 0``, stride HQ).
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.attn.parallel_common import (
    causal_key_range,
    head_row,
    head_row_origin,
    load_gate,
    load_tile_pair,
    program_tile,
    row_ptrs,
    tile_ptrs,
)
from kernels.utils import LN2, LOG2E, dot, dot_acc


@triton.jit
def _key_gates(gc, gct, i_s, i_hq, bos_k, gt_row, gt_col0, TKP, o_s, b_g0, HQ: tl.constexpr,
               GATE_T: tl.constexpr):
    """[BS] base-2 gate sums of the keys i_s + o_s (all inside TK) relative to the tile's first query
    (gk_j - g0), from the [B, T, HQ] running sums (GATE_T = 0: stride HQ) or from the per-head rows
    gct [B * HQ, TKP] of base-2 sums (GATE_T = 1: row gt_row, column gt_col0 + key, contiguous)."""
    if GATE_T == 0:
        b_g = load_gate(gc, bos_k + i_s, i_hq, o_s, None, HQ, False)  # no row mask: keys inside TK
    else:
        b_g = head_row(gct, gt_row, TKP, gt_col0 + i_s, o_s, None, 0.0, False)
    return b_g - b_g0


@triton.jit
def _fwd_block(k, v, desc_k, desc_v, gc, b_q, b_gq, b_gk, b_g0, b_m, b_l, b_o, i_s, i_h, i_hq, bos_k, TK, o_s, o_d,
               o_qpos, qk_scale, H: tl.constexpr, HQ: tl.constexpr, K: tl.constexpr, BS: tl.constexpr,
               BK: tl.constexpr, USE_G: tl.constexpr, USE_TMA: tl.constexpr, DOT_PREC: tl.constexpr,
               MASKED: tl.constexpr):
    """Fold one key block [i_s, i_s + BS) into the running max b_m, sum b_l and output accumulator b_o
    (online softmax in base 2: the old sum and accumulator are rescaled by exp2(m_old - m_new)).
    Unmasked blocks lie wholly before the tile and inside TK, and get their keys' gate sums b_gk from
    the caller; MASKED ones need the causal and bounds mask and read their gates from gc here.
    b_gq = gq_i - g0, b_gk = gk_j - g0 and b_g0 = g0 (base 2) when USE_G."""
    o_k = i_s + o_s
    m_k = o_k < TK
    # (TMA: masked blocks zero v past the sequence; those keys' scores are -inf, so k may stay)
    b_k, b_v = load_tile_pair(k, v, desc_k, desc_v, bos_k + i_s, i_h, o_s, o_d, m_k, H, K, USE_TMA, MASKED, False)
    b_qk = dot(b_q, tl.trans(b_k), DOT_PREC)
    if MASKED:
        m_s = (o_qpos[:, None] >= o_k[None, :]) & m_k[None, :]
    if USE_G:
        if MASKED:
            b_gk = load_gate(gc, bos_k + i_s, i_hq, o_s, m_k, HQ, True) - b_g0
            b_s = tl.where(m_s, b_qk * qk_scale + (b_gq[:, None] - b_gk[None, :]), float("-inf"))
        else:
            b_s = b_qk * qk_scale - b_gk[None, :]
        b_mn = tl.maximum(b_m, tl.max(b_s, 1))
        b_p = tl.math.exp2(b_s - b_mn[:, None])
    else:
        if MASKED:
            b_qk = tl.where(m_s, b_qk, float("-inf"))
        b_mn = tl.maximum(b_m, tl.max(b_qk, 1) * qk_scale)
        b_p = tl.math.exp2(b_qk * qk_scale - b_mn[:, None])
    b_r = tl.math.exp2(b_m - b_mn)
    b_l = b_l * b_r + tl.sum(b_p, 1)
    b_o = dot_acc(b_p.to(b_v.dtype), b_v, b_o * b_r[:, None], DOT_PREC)
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
    desc_k,
    desc_v,
    gct,
    scale,
    TQ,
    TK,
    NT,
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
    GATE_T: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    DOT_PREC: tl.constexpr,
    GROUP: tl.constexpr,
):
    # axis 0 enumerates (query tile, batch x head): GROUP heads at a time, the tiles with the most keys
    # first
    i_hq, t0, bos_q, bos_k, TQ, TK, offset = program_tile(chunk_indices, cu_seqlens, TQ, TK, NT, B, HQ, BT, True,
                                                          IS_VARLEN, GROUP)
    i_h = i_hq // G

    o_t = tl.arange(0, BT)
    o_s = tl.arange(0, BS)
    o_d = tl.arange(0, BK)
    m_t = (t0 + o_t) < TQ
    m_d = o_d < K
    # absolute positions of this tile's queries (int64 scalar + small int32 vector)
    o_qpos = offset + t0 + o_t

    p_q = tile_ptrs(q, bos_q + t0, i_hq, o_t, o_d, HQ, K)
    b_q = tl.load(p_q, mask=m_t[:, None] & m_d[None, :], other=0.0)
    qk_scale = scale * LOG2E
    b_gq = tl.zeros([BT], dtype=tl.float32)
    b_g0 = 0.0
    if USE_G:
        # base-2 gate sums of the tile's queries, relative to its first query's (g0)
        b_g0 = tl.load(gc + (bos_k + offset + t0) * HQ + i_hq).to(tl.float32) * LOG2E
        b_gq = load_gate(gc, bos_k + offset + t0, i_hq, o_t, m_t, HQ, True) - b_g0

    # this program's row of the per-head gate sums gct [B * HQ, TKP] and its sequence's first column
    gt_row, _, gt_col0 = head_row_origin(bos_q, bos_k, TK, i_hq, HQ, IS_VARLEN)

    b_m = tl.full([BT], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([BT], dtype=tl.float32)
    b_o = tl.zeros([BT, BK], dtype=tl.float32)

    # key blocks wholly before the tile's first query (no causal mask, no bounds mask on rows; gated
    # scores without the row constant), then the blocks that overlap the diagonal (mask j > i and keys
    # beyond TK; per-row gated scores). Every row keeps key i_diag <= its own position, so no row is
    # all -inf after the first diagonal block.
    i_diag, i_end = causal_key_range(offset, t0, TK, BT, BS)
    # (loading the next block's gate sums one iteration ahead by hand was slower everywhere: H100,
    # 2026-11-24, docs/notes-prefill.md; Triton's pipeliner already overlaps these loads)
    b_gk = tl.zeros([BS], dtype=tl.float32)
    for i_s in range(0, i_diag, BS):
        if USE_G:
            b_gk = _key_gates(gc, gct, i_s, i_hq, bos_k, gt_row, gt_col0, TKP, o_s, b_g0, HQ, GATE_T)
        b_m, b_l, b_o = _fwd_block(k, v, desc_k, desc_v, gc, b_q, b_gq, b_gk, b_g0, b_m, b_l, b_o, i_s, i_h, i_hq,
                                   bos_k, TK, o_s, o_d, o_qpos, qk_scale, H, HQ, K, BS, BK, USE_G, USE_TMA,
                                   DOT_PREC, False)
    # back to the per-row representation: m = m' + (gq_i - g0)
    b_m += b_gq
    for i_s in range(i_diag, i_end, BS):
        b_m, b_l, b_o = _fwd_block(k, v, desc_k, desc_v, gc, b_q, b_gq, b_gk, b_g0, b_m, b_l, b_o, i_s, i_h, i_hq,
                                   bos_k, TK, o_s, o_d, o_qpos, qk_scale, H, HQ, K, BS, BK, USE_G, USE_TMA,
                                   DOT_PREC, True)

    b_o = b_o / b_l[:, None]
    # natural-log lse = (m2 + log2 l) * ln 2 (m2 is in the per-row representation: true base-2 scores)
    b_lse = (b_m + tl.math.log2(b_l)) * LN2
    p_o = tile_ptrs(o, bos_q + t0, i_hq, o_t, o_d, HQ, K)
    tl.store(p_o, b_o.to(p_o.dtype.element_ty), mask=m_t[:, None] & m_d[None, :])
    tl.store(row_ptrs(lse, bos_q + t0, i_hq, o_t, HQ), b_lse, mask=m_t)
