"""Triton helpers shared by the parallel attention kernels (forward in ``parallel_fwd``, dk/dv and dq in
``parallel_bwd``): which tile a program owns, pointers into the [B, T, H, D] tensors and the [B, T, H]
per-row tensors, the paired tile loads (k and v, q and do; pointers or TMA) and the per-head rows
[B * HQ, T] of the backward. Triton inlines them.

Names as in the kernels: ``i_`` indices, ``o_`` offsets, ``m_`` masks, ``p_`` pointers, ``b_`` blocks;
``row0`` is a tile's first row in the flattened (batch x time) row space (int64).
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.utils import LOG2E, tile_rows


@triton.jit
def program_tile(chunk_indices, cu_seqlens, TQ, TK, NT, B: tl.constexpr, NH: tl.constexpr, BLOCK: tl.constexpr,
                 LAST_FIRST: tl.constexpr, IS_VARLEN: tl.constexpr, GROUP: tl.constexpr):
    """Axis 0 enumerates (tile, batch x head), tiles of BLOCK rows. Returns the program's head, the
    tile's first row within its sequence, the sequence's first query and key rows, its TQ and TK, and
    the queries' offset TK - TQ (query row r sits at absolute position offset + r). LAST_FIRST runs
    the tiles in reverse order (query tiles: the last ones see the most keys); NT is the tile count
    of packed sequences (dense batches: computed here).

    GROUP = 0: the batch x head index fastest. GROUP > 0 (query tiles, LAST_FIRST): GROUP (batch x
    head)s at a time, each group's tiles in order, its heads fastest, so that the programs running
    together read the keys of a few heads and find them in L2."""
    i_p = tl.program_id(0).to(tl.int64)
    if LAST_FIRST:
        if not IS_VARLEN:
            NT = tl.cdiv(TQ, BLOCK)
    if GROUP > 0:
        tl.static_assert(LAST_FIRST)
        i_g = i_p // (GROUP * NT)
        n_g = tl.minimum(B * NH - i_g * GROUP, GROUP)  # the last group may be smaller
        i_r = i_p - i_g * (GROUP * NT)
        i_bh = i_g * GROUP + i_r % n_g
        i_tile = NT - 1 - i_r // n_g
    else:
        i_bh = i_p % (B * NH)
        if LAST_FIRST:
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
def load_tile_pair(x, y, desc_x, desc_y, row0, i_head, o_r, o_d, m_r, NH: tl.constexpr, K: tl.constexpr,
                   USE_TMA: tl.constexpr, MASKED: tl.constexpr, ZERO_X: tl.constexpr):
    """x and y [R, BK] at rows row0 + o_r of head i_head of two [rows, NH, K] tensors (k and v, or q and
    do). Pointer loads read 0 outside the head dim and, in MASKED blocks, outside the rows m_r. TMA
    loads (descriptors over [rows, NH * K], [R, BK] blocks) read whatever rows follow (the next
    sequence, or zeros past the tensor): MASKED blocks zero y there, and x too when ZERO_X (callers
    whose scores of those rows are masked need not zero x)."""
    if USE_TMA:
        # TMA coordinates are int32 (the host keeps the row count below 2^31 for this path)
        b_x = desc_x.load([row0.to(tl.int32), (i_head * K).to(tl.int32)])
        b_y = desc_y.load([row0.to(tl.int32), (i_head * K).to(tl.int32)])
        if MASKED:
            b_y = tl.where(m_r[:, None], b_y, 0.0)
            if ZERO_X:
                b_x = tl.where(m_r[:, None], b_x, 0.0)
    else:
        if MASKED:
            m_rd = m_r[:, None] & (o_d < K)[None, :]
        else:
            m_rd = (o_d < K)[None, :]
        b_x = tl.load(tile_ptrs(x, row0, i_head, o_r, o_d, NH, K), mask=m_rd, other=0.0)
        b_y = tl.load(tile_ptrs(y, row0, i_head, o_r, o_d, NH, K), mask=m_rd, other=0.0)
    return b_x, b_y


@triton.jit
def head_row(x, row, TP, col0, o_r, m_r, other, MASKED: tl.constexpr):
    """[R] fp32 values at columns col0 + o_r of row ``row`` of a per-head row tensor x [rows, TP] (the
    backward's base-2 lse, delta and gate sums: contiguous along time); outside m_r ``other`` when
    MASKED. o_r = 0 reads the one value at col0."""
    p_x = x + row * TP + col0 + o_r
    if MASKED:
        return tl.load(p_x, mask=m_r, other=other)
    else:
        return tl.load(p_x)


@triton.jit
def head_row_origin(bos_q, bos_k, TK, i_hq, HQ: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Where a program's sequence and query head sit in the per-head row tensors [B * HQ, TP]: the row,
    and the columns of its first query and first key. Dense batches have one row per (batch, head)
    and columns from 0; packed sequences (B = 1) share row i_hq at their flattened positions."""
    if IS_VARLEN:
        return i_hq, bos_q, bos_k
    else:
        return (bos_k // TK) * HQ + i_hq, bos_q * 0, bos_k * 0


@triton.jit
def causal_key_range(offset, t0, TK, BT: tl.constexpr, BS: tl.constexpr):
    """Key blocks of the query tile [t0, t0 + BT): [0, i_diag) precede every query of the tile (no
    mask needed), [i_diag, i_end) overlap the diagonal (causal mask, keys beyond TK)."""
    i_diag = ((offset + t0) // BS) * BS
    i_end = tl.minimum(offset + t0 + BT, TK)
    return i_diag, i_end
