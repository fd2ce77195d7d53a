"""Forward Triton kernel of gated causal attention in parallel form; the math and the host side are in
``kernels.attn.parallel``."""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.attn.parallel_common import (
    causal_key_range,
    key_block_scores,
    load_gate,
    program_tile,
    row_ptrs,
    tile_ptrs,
)
from kernels.utils import LN2, LOG2E, dot


@triton.jit
def _fwd_block(k, v, gc, b_q, b_gq, b_m, b_l, b_o, i_s, i_h, i_hq, bos_k, TK, o_s, o_d, o_qpos, qk_scale,
               H: tl.constexpr, HQ: tl.constexpr, K: tl.constexpr, USE_G: tl.constexpr, DOT_PREC: tl.constexpr,
               MASKED: tl.constexpr):
    """Fold one key block [i_s, i_s + BS) into the running max b_m, sum b_l and output accumulator b_o
    (online softmax in base 2): rescale the old sum and accumulator by exp2(m_old - m_new). Blocks
    before the diagonal (not MASKED) lie wholly inside TK: no mask at all."""
    b_s, _, b_v = key_block_scores(k, v, gc, b_q, b_gq, i_s, i_h, i_hq, bos_k, TK, o_s, o_d, o_qpos, qk_scale, H,
                                   HQ, K, USE_G, DOT_PREC, MASKED, MASKED)
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
    i_hq, t0, bos_q, bos_k, TQ, TK, offset = program_tile(chunk_indices, cu_seqlens, TQ, TK, NT, B, HQ, BT, True,
                                                          IS_VARLEN)
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
    if USE_G:
        b_gq = load_gate(gc, bos_k + offset + t0, i_hq, o_t, m_t, HQ, True)

    b_m = tl.full([BT], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([BT], dtype=tl.float32)
    b_o = tl.zeros([BT, BK], dtype=tl.float32)

    # key blocks wholly before the tile's first query (no causal mask, no bounds mask on rows), then
    # the blocks that overlap the diagonal (mask j > i and keys beyond TK). Every row keeps key
    # i_diag <= its own position, so no row is all -inf after the first block.
    i_diag, i_end = causal_key_range(offset, t0, TK, BT, BS)
    for i_s in range(0, i_diag, BS):
        b_m, b_l, b_o = _fwd_block(k, v, gc, b_q, b_gq, b_m, b_l, b_o, i_s, i_h, i_hq, bos_k, TK, o_s, o_d, o_qpos,
                                   qk_scale, H, HQ, K, USE_G, DOT_PREC, False)
    for i_s in range(i_diag, i_end, BS):
        b_m, b_l, b_o = _fwd_block(k, v, gc, b_q, b_gq, b_m, b_l, b_o, i_s, i_h, i_hq, bos_k, TK, o_s, o_d, o_qpos,
                                   qk_scale, H, HQ, K, USE_G, DOT_PREC, True)

    b_o = b_o / b_l[:, None]
    # natural-log lse = (m2 + log2 l) * ln 2
    b_lse = (b_m + tl.math.log2(b_l)) * LN2
    p_o = tile_ptrs(o, bos_q + t0, i_hq, o_t, o_d, HQ, K)
    tl.store(p_o, b_o.to(p_o.dtype.element_ty), mask=m_t[:, None] & m_d[None, :])
    tl.store(row_ptrs(lse, bos_q + t0, i_hq, o_t, HQ), b_lse, mask=m_t)
