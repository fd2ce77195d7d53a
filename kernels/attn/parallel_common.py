"""Triton helpers shared by the parallel attention kernels (forward in ``parallel_fwd``, dk/dv and dq in
``parallel_bwd``): which tile a program owns, pointers into the [B, T, H, D] tensors and the [B, T, H]
per-row tensors, the loads every kernel repeats, and the base-2 scores of a query tile against one key
block. Triton inlines them; they keep the order of operations the kernels had inline (sm_90 SASS
compared before/after the move: identical except the packed gated forward, whose masked key block
builds its load mask before its pointers, as the dq kernel always did).

Names as in the kernels: ``i_`` indices, ``o_`` offsets, ``m_`` masks, ``p_`` pointers, ``b_`` blocks;
``row0`` is a tile's first row in the flattened (batch x time) row space (int64).
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.utils import LOG2E, dot, tile_rows


@triton.jit
def program_tile(chunk_indices, cu_seqlens, TQ, TK, NT, B: tl.constexpr, NH: tl.constexpr, BLOCK: tl.constexpr,
                 LAST_FIRST: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Axis 0 enumerates (tile, batch x head), tiles of BLOCK rows. Returns the program's head, the
    tile's first row within its sequence, the sequence's first query and key rows, its TQ and TK, and
    the queries' offset TK - TQ (query row r sits at absolute position offset + r). LAST_FIRST runs
    the tiles in reverse order (query tiles: the last ones see the most keys); NT is the tile count
    of packed sequences (dense batches: computed here)."""
    i_p = tl.program_id(0).to(tl.int64)
    i_bh = i_p % (B * NH)
    if LAST_FIRST:
        if not IS_VARLEN:
            NT = tl.cdiv(TQ, BLOCK)
        i_tile = NT - 1 - i_p // (B * NH)
    else:
        i_tile = i_p // (B * NH)
    i_b, i_head = i_bh // NH, i_bh % NH
    i_tile, bos_q, bos_k, TQ, TK = tile_rows(chunk_indices, cu_seqlens, i_tile, i_b, TQ, TK, IS_VARLEN)
    offset = TK - TQ
    return i_head, i_tile * BLOCK, bos_q, bos_k, TQ, TK, offset


@triton.jit
def tile_ptrs(x, row0, i_head, o_r, o_d, NH: tl.constexpr, K: tl.constexpr):
    """[R, BK] pointers to rows row0 + o_r, columns o_d of head i_head of x [rows, NH, K]."""
    return x + (row0 * NH + i_head) * K + o_r[:, None] * (NH * K) + o_d[None, :]


@triton.jit
def row_ptrs(x, row0, i_head, o_r, NH: tl.constexpr):
    """[R] pointers to rows row0 + o_r of head i_head of x [rows, NH] (gates, lse, delta)."""
    return x + row0 * NH + i_head + o_r * NH


@triton.jit
def load_gate(gc, row0, i_hq, o_r, m_r, HQ: tl.constexpr, MASK_ROWS: tl.constexpr):
    """Running sums of the log gates of rows row0 + o_r of query head i_hq in base 2, [R] fp32 (rows
    outside m_r read 0 when MASK_ROWS)."""
    p_g = row_ptrs(gc, row0, i_hq, o_r, HQ)
    if MASK_ROWS:
        b_g = tl.load(p_g, mask=m_r, other=0.0)
    else:
        b_g = tl.load(p_g)
    return b_g.to(tl.float32) * LOG2E


@triton.jit
def load_kv(k, v, row0, i_h, o_s, o_d, m_sd, H: tl.constexpr, K: tl.constexpr):
    """k and v [BS, BK] of rows row0 + o_s of key/value head i_h; elements outside the mask m_sd read 0."""
    p_k = tile_ptrs(k, row0, i_h, o_s, o_d, H, K)
    p_v = tile_ptrs(v, row0, i_h, o_s, o_d, H, K)
    b_k = tl.load(p_k, mask=m_sd, other=0.0)
    b_v = tl.load(p_v, mask=m_sd, other=0.0)
    return b_k, b_v


@triton.jit
def load_query_rows(q, do, lse, delta, row0, i_hq, o_t, o_d, m_t, m_td, HQ: tl.constexpr, K: tl.constexpr):
    """What the backward needs of query rows row0 + o_t of head i_hq: q and do [BT, BK] (mask m_td), lse
    in base 2 and delta [BT]. Rows outside m_t get lse = +inf so that their probabilities are exactly 0."""
    p_q = tile_ptrs(q, row0, i_hq, o_t, o_d, HQ, K)
    p_do = tile_ptrs(do, row0, i_hq, o_t, o_d, HQ, K)
    b_q = tl.load(p_q, mask=m_td, other=0.0)
    b_do = tl.load(p_do, mask=m_td, other=0.0)
    p_r = row0 * HQ + i_hq + o_t * HQ
    b_lse = tl.load(lse + p_r, mask=m_t, other=float("inf")) * LOG2E
    b_delta = tl.load(delta + p_r, mask=m_t, other=0.0)
    return b_q, b_do, b_lse, b_delta


@triton.jit
def causal_key_range(offset, t0, TK, BT: tl.constexpr, BS: tl.constexpr):
    """Key blocks of the query tile [t0, t0 + BT): [0, i_diag) precede every query of the tile (no
    mask needed), [i_diag, i_end) overlap the diagonal (causal mask, keys beyond TK)."""
    i_diag = ((offset + t0) // BS) * BS
    i_end = tl.minimum(offset + t0 + BT, TK)
    return i_diag, i_end


@triton.jit
def key_block_scores(k, v, gc, b_q, b_gq, i_s, i_h, i_hq, bos_k, TK, o_s, o_d, o_qpos, qk_scale, H: tl.constexpr,
                     HQ: tl.constexpr, K: tl.constexpr, USE_G: tl.constexpr, DOT_PREC: tl.constexpr,
                     MASKED: tl.constexpr, MASK_ROWS: tl.constexpr):
    """Base-2 scores s2 [BT, BS] of the query tile (b_q, its base-2 gate sums b_gq, absolute positions
    o_qpos) against the key block [i_s, i_s + BS) (o_s = arange(BS), o_d = arange(BK)), and the
    block's k and v: s2_ij = (scale log2 e) q_i.k_j + (gc_i - gc_j) log2 e, -inf where key j > query i
    when MASKED. MASK_ROWS bounds-checks the block's rows against TK (always needed when MASKED)."""
    o_k = i_s + o_s
    m_k = o_k < TK
    if MASK_ROWS:
        m_kd = m_k[:, None] & (o_d < K)[None, :]
    else:
        m_kd = (o_d < K)[None, :]
    b_k, b_v = load_kv(k, v, bos_k + i_s, i_h, o_s, o_d, m_kd, H, K)
    b_s = dot(b_q, tl.trans(b_k), DOT_PREC) * qk_scale
    if USE_G:
        b_gk = load_gate(gc, bos_k + i_s, i_hq, o_s, m_k, HQ, MASK_ROWS)
        b_s += b_gq[:, None] - b_gk[None, :]
    if MASKED:
        b_s = tl.where((o_qpos[:, None] >= o_k[None, :]) & m_k[None, :], b_s, float("-inf"))
    return b_s, b_k, b_v
