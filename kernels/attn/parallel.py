"""Triton kernels for gated causal attention in parallel form (prefill and training).

Same semantics and signature as ``kernels.attn.naive.parallel_attn`` (see its docstring):

    q [B, Tq, HQ, D], k/v [B, Tk, H, D], query head i reads key/value head i // (HQ // H)
    s_ij = scale * q_i . k_j + gc_i - gc_j   for key j <= query i (absolute positions)
    o_i  = sum_j softmax_j(s_ij) v_j,        gc_t = sum_{l <= t} g_l (per sequence)

Kernels (one file, one strategy; fla-style names: ``b_`` blocks, ``p_`` pointers, ``o_`` offsets,
``m_`` masks, ``i_`` indices; ``BT`` = query tile, ``BS`` = key tile, ``BK`` = padded head dim):

* ``parallel_attn_fwd_kernel``: one program per (query tile, query head). FlashAttention-2 online
  softmax in base 2: with log2(e) folded into the scale and the gate,
  s2_ij = s_ij * log2(e) = (scale * log2(e)) q_i.k_j + (gc_i - gc_j) * log2(e),
  so every exponential is one ``exp2``; the running max m_i and sum l_i rescale the accumulator by
  exp2(m_old - m_new). The causal key loop is split into the key blocks that lie wholly before the
  tile's first query (no mask at all) and the blocks that overlap the diagonal (causal mask).
  Stores o and lse (natural log) per row.
* ``parallel_attn_bwd_kernel_preprocess``: delta_i = sum_d o_id * do_id (fp32).
* ``parallel_attn_bwd_kernel_dkdv``: one program per (key tile, key/value head); it loops over the
  query heads of its GQA group (so dk/dv are accumulated in registers for the whole group and no
  HQ-sized fp32 buffers exist) and, per head, over the query blocks at or after the tile
  (diagonal blocks masked, later blocks unmasked). With P_ij = exp2(s2_ij - lse2_i) recomputed,
      dv_j += sum_i P_ij do_i,   dP_ij = do_i . v_j,   dS_ij = P_ij (dP_ij - delta_i),
      dk_j += scale * sum_i dS_ij q_i,   dgc_j -= sum_i dS_ij   (per query head).
* ``parallel_attn_bwd_kernel_dq``: one program per (query tile, query head):
      dq_i = scale * sum_j dS_ij k_j,    dgc_i += sum_j dS_ij
  it adds its row sums to the dkdv kernel's column sums (read from one buffer, written to another:
  every position is owned by one program, so the result is deterministic and re-runnable).
* The gate gradient is then the reverse running sum per sequence: dg_l = sum_{t >= l} dgc_t.

Grids put every program on axis 0 (no 65535 limit on axes 1/2); scalar base offsets are int64 so
that T * H * D beyond 2^31 cannot overflow.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels.attn.naive import _check_shapes
from kernels.utils import fix_triton_interpreter_index, next_power_of_2

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if _INTERPRET:
    fix_triton_interpreter_index()

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)


# ----------------------------------------------------------------------------------------------
# block configurations
# ----------------------------------------------------------------------------------------------


def _fwd_configs() -> list[triton.Config]:
    if _INTERPRET:
        return [triton.Config({"BT": 32, "BS": 16}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BT": bt, "BS": bs}, num_warps=w, num_stages=s)
        for bt, bs, w, s in [
            (128, 64, 8, 3),
            (128, 128, 8, 3),
            (128, 64, 4, 3),
            (128, 32, 4, 4),
            (64, 64, 4, 3),
            (64, 32, 4, 3),
        ]
    ]


def _bwd_configs() -> list[triton.Config]:
    # dkdv: BS = key tile of the program, BT = query block of the inner loop.
    # dq:   BT = query tile of the program, BS = key block of the inner loop.
    if _INTERPRET:
        return [triton.Config({"BT": 16, "BS": 32}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BT": bt, "BS": bs}, num_warps=w, num_stages=s)
        for bt, bs, w, s in [
            (32, 128, 8, 2),
            (64, 128, 8, 2),
            (32, 64, 4, 3),
            (64, 64, 4, 3),
            (16, 64, 4, 3),
        ]
    ]


def _bwd_dq_configs() -> list[triton.Config]:
    if _INTERPRET:
        return [triton.Config({"BT": 32, "BS": 16}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BT": bt, "BS": bs}, num_warps=w, num_stages=s)
        for bt, bs, w, s in [
            (128, 32, 8, 2),
            (128, 64, 8, 2),
            (64, 32, 4, 3),
            (64, 64, 4, 3),
            (64, 16, 4, 3),
        ]
    ]


def _fits(cfg: triton.Config, BK: int, n_acc: int) -> bool:
    # skip tiles whose fp32 accumulators alone would exceed ~128 registers per thread
    tile = max(cfg.kwargs["BT"], cfg.kwargs["BS"]) if n_acc == 2 else cfg.kwargs["BT"]
    return tile * BK * n_acc <= 128 * 32 * cfg.num_warps


def _prune(n_acc: int):
    def prune(configs, named_args, **kwargs):
        BK = named_args.get("BK", kwargs.get("BK"))
        kept = [c for c in configs if _fits(c, BK, n_acc)]
        return kept or configs[-1:]

    return prune


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _dot(a, b, DOT_PREC: tl.constexpr):
    # "upcast": the interpreter multiplies bf16 as raw integers, so it gets fp32 operands instead
    if DOT_PREC == "upcast":
        return _dot_fp32(a, b)
    else:
        return tl.dot(a, b, input_precision=DOT_PREC)


@triton.jit
def _dot_fp32(a, b):
    return tl.dot(a.to(tl.float32), b.to(tl.float32))


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
    if IS_VARLEN:
        i_n = tl.load(chunk_indices + i_t * 2).to(tl.int64)
        i_t = tl.load(chunk_indices + i_t * 2 + 1).to(tl.int64)
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        TQ = eos - bos
        TK = TQ
        bos_q, bos_k = bos, bos
    else:
        bos_q, bos_k = i_b * TQ, i_b * TK
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
        b_s = _dot(b_q, tl.trans(b_k), DOT_PREC) * qk_scale
        if USE_G:
            b_gk = tl.load(gc + (bos_k + i_s) * HQ + i_hq + o_s * HQ).to(tl.float32) * LOG2E
            b_s += b_gq[:, None] - b_gk[None, :]
        # online softmax: new max, rescale the old sum and accumulator by exp2(m_old - m_new)
        b_mn = tl.maximum(b_m, tl.max(b_s, 1))
        b_r = tl.math.exp2(b_m - b_mn)
        b_p = tl.math.exp2(b_s - b_mn[:, None])
        b_l = b_l * b_r + tl.sum(b_p, 1)
        b_o = b_o * b_r[:, None] + _dot(b_p.to(b_v.dtype), b_v, DOT_PREC)
        b_m = b_mn

    # keys [i_diag, i_end) overlap the diagonal: mask j > i and keys beyond TK.
    # every row keeps key i_diag <= its own position, so no row is all -inf after the first block.
    for i_s in range(i_diag, i_end, BS):
        o_k = i_s + o_s
        m_k = o_k < TK
        p_k = k + ((bos_k + i_s) * H + i_h) * K + o_s[:, None] * (H * K) + o_d[None, :]
        p_v = v + ((bos_k + i_s) * H + i_h) * K + o_s[:, None] * (H * K) + o_d[None, :]
        b_k = tl.load(p_k, mask=m_k[:, None] & m_d[None, :], other=0.0)
        b_v = tl.load(p_v, mask=m_k[:, None] & m_d[None, :], other=0.0)
        b_s = _dot(b_q, tl.trans(b_k), DOT_PREC) * qk_scale
        if USE_G:
            b_gk = tl.load(gc + (bos_k + i_s) * HQ + i_hq + o_s * HQ, mask=m_k, other=0.0).to(tl.float32) * LOG2E
            b_s += b_gq[:, None] - b_gk[None, :]
        b_s = tl.where((o_qpos[:, None] >= o_k[None, :]) & m_k[None, :], b_s, float("-inf"))
        b_mn = tl.maximum(b_m, tl.max(b_s, 1))
        b_r = tl.math.exp2(b_m - b_mn)
        b_p = tl.math.exp2(b_s - b_mn[:, None])
        b_l = b_l * b_r + tl.sum(b_p, 1)
        b_o = b_o * b_r[:, None] + _dot(b_p.to(b_v.dtype), b_v, DOT_PREC)
        b_m = b_mn

    b_o = b_o / b_l[:, None]
    # natural-log lse = (m2 + log2 l) * ln 2
    b_lse = (b_m + tl.math.log2(b_l)) * LN2
    p_o = o + ((bos_q + t0) * HQ + i_hq) * K + o_t[:, None] * (HQ * K) + o_d[None, :]
    tl.store(p_o, b_o.to(p_o.dtype.element_ty), mask=m_t[:, None] & m_d[None, :])
    tl.store(lse + (bos_q + t0) * HQ + i_hq + o_t * HQ, b_lse, mask=m_t)


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
    p_q = q + ((bos_q + i_t) * HQ + i_hq) * K + o_t[:, None] * (HQ * K) + o_d[None, :]
    p_do = do + ((bos_q + i_t) * HQ + i_hq) * K + o_t[:, None] * (HQ * K) + o_d[None, :]
    b_q = tl.load(p_q, mask=m_qd, other=0.0)
    b_do = tl.load(p_do, mask=m_qd, other=0.0)
    # rows beyond TQ get lse = +inf so that their probabilities are exactly 0
    p_r = (bos_q + i_t) * HQ + i_hq + o_t * HQ
    b_lse = tl.load(lse + p_r, mask=m_q, other=float("inf")) * LOG2E
    b_delta = tl.load(delta + p_r, mask=m_q, other=0.0)
    # [BS, BT] transposed scores s2_ji in base 2
    b_sT = _dot(b_k, tl.trans(b_q), DOT_PREC) * qk_scale
    if USE_G:
        b_gq = tl.load(gc + (bos_k + offset + i_t) * HQ + i_hq + o_t * HQ, mask=m_q, other=0.0) * LOG2E
        b_sT += b_gq[None, :] - b_gk[:, None]
    if MASKED:  # diagonal blocks: key j > query i gets probability 0
        b_sT = tl.where((offset + o_q)[None, :] >= o_k[:, None], b_sT, float("-inf"))
    # P^T_ji = exp2(s2_ij - lse2_i): the forward's normalized probabilities, recomputed
    b_pT = tl.math.exp2(b_sT - b_lse[None, :])
    b_dv += _dot(b_pT.to(b_do.dtype), b_do, DOT_PREC)
    b_dpT = _dot(b_v, tl.trans(b_do), DOT_PREC)
    b_dsT = b_pT * (b_dpT - b_delta[None, :])
    b_dk += _dot(b_dsT.to(b_q.dtype), b_q, DOT_PREC)
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
    i_p = tl.program_id(0).to(tl.int64)
    i_bh = i_p % (B * H)
    i_s = i_p // (B * H)
    i_b, i_h = i_bh // H, i_bh % H
    if IS_VARLEN:
        i_n = tl.load(chunk_indices + i_s * 2).to(tl.int64)
        i_s = tl.load(chunk_indices + i_s * 2 + 1).to(tl.int64)
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        TQ = eos - bos
        TK = TQ
        bos_q, bos_k = bos, bos
    else:
        bos_q, bos_k = i_b * TQ, i_b * TK
    offset = TK - TQ
    s0 = i_s * BS

    o_t = tl.arange(0, BT)
    o_s = tl.arange(0, BS)
    o_d = tl.arange(0, BK)
    o_k = s0 + o_s
    m_k = o_k < TK
    m_d = o_d < K
    m_kd = m_k[:, None] & m_d[None, :]

    p_k = k + ((bos_k + s0) * H + i_h) * K + o_s[:, None] * (H * K) + o_d[None, :]
    p_v = v + ((bos_k + s0) * H + i_h) * K + o_s[:, None] * (H * K) + o_d[None, :]
    b_k = tl.load(p_k, mask=m_kd, other=0.0)
    b_v = tl.load(p_v, mask=m_kd, other=0.0)
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
            p_gk = gc + (bos_k + s0) * HQ + i_hq + o_s * HQ
            b_gk = tl.load(p_gk, mask=m_k, other=0.0).to(tl.float32) * LOG2E
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
            tl.store(dgc_k + (bos_k + s0) * HQ + i_hq + o_s * HQ, b_dgk, mask=m_k)

    p_dk = dk + ((bos_k + s0) * H + i_h) * K + o_s[:, None] * (H * K) + o_d[None, :]
    p_dv = dv + ((bos_k + s0) * H + i_h) * K + o_s[:, None] * (H * K) + o_d[None, :]
    tl.store(p_dk, (b_dk * scale).to(p_dk.dtype.element_ty), mask=m_kd)
    tl.store(p_dv, b_dv.to(p_dv.dtype.element_ty), mask=m_kd)


@triton.jit
def _dq_block(k, v, gc, b_q, b_do, b_lse, b_delta, b_gq, b_dq, b_dgq, i_s, i_h, i_hq, bos_k, TK, o_qpos, qk_scale,
              H: tl.constexpr, HQ: tl.constexpr, K: tl.constexpr, BS: tl.constexpr, BK: tl.constexpr,
              USE_G: tl.constexpr, DOT_PREC: tl.constexpr, MASKED: tl.constexpr):
    """One key block [i_s, i_s + BS) against the program's query tile."""
    o_s = tl.arange(0, BS)
    o_d = tl.arange(0, BK)
    o_k = i_s + o_s
    m_k = o_k < TK
    m_kd = m_k[:, None] & (o_d < K)[None, :]
    p_k = k + ((bos_k + i_s) * H + i_h) * K + o_s[:, None] * (H * K) + o_d[None, :]
    p_v = v + ((bos_k + i_s) * H + i_h) * K + o_s[:, None] * (H * K) + o_d[None, :]
    b_k = tl.load(p_k, mask=m_kd, other=0.0)
    b_v = tl.load(p_v, mask=m_kd, other=0.0)
    b_s = _dot(b_q, tl.trans(b_k), DOT_PREC) * qk_scale
    if USE_G:
        b_gk = tl.load(gc + (bos_k + i_s) * HQ + i_hq + o_s * HQ, mask=m_k, other=0.0).to(tl.float32) * LOG2E
        b_s += b_gq[:, None] - b_gk[None, :]
    if MASKED:  # diagonal blocks: key j > query i gets probability 0
        b_s = tl.where((o_qpos[:, None] >= o_k[None, :]) & m_k[None, :], b_s, float("-inf"))
    # P_ij = exp2(s2_ij - lse2_i): the forward's normalized probabilities
    b_p = tl.math.exp2(b_s - b_lse[:, None])
    b_dp = _dot(b_do, tl.trans(b_v), DOT_PREC)
    b_ds = b_p * (b_dp - b_delta[:, None])
    b_dq += _dot(b_ds.to(b_k.dtype), b_k, DOT_PREC)
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
    i_p = tl.program_id(0).to(tl.int64)
    i_bh = i_p % (B * HQ)
    if not IS_VARLEN:
        NT = tl.cdiv(TQ, BT)
    i_t = NT - 1 - i_p // (B * HQ)
    i_b, i_hq = i_bh // HQ, i_bh % HQ
    i_h = i_hq // G
    if IS_VARLEN:
        i_n = tl.load(chunk_indices + i_t * 2).to(tl.int64)
        i_t = tl.load(chunk_indices + i_t * 2 + 1).to(tl.int64)
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        TQ = eos - bos
        TK = TQ
        bos_q, bos_k = bos, bos
    else:
        bos_q, bos_k = i_b * TQ, i_b * TK
    offset = TK - TQ
    t0 = i_t * BT

    o_t = tl.arange(0, BT)
    o_s = tl.arange(0, BS)
    o_d = tl.arange(0, BK)
    m_t = (t0 + o_t) < TQ
    m_d = o_d < K
    m_td = m_t[:, None] & m_d[None, :]
    o_qpos = offset + t0 + o_t

    p_q = q + ((bos_q + t0) * HQ + i_hq) * K + o_t[:, None] * (HQ * K) + o_d[None, :]
    p_do = do + ((bos_q + t0) * HQ + i_hq) * K + o_t[:, None] * (HQ * K) + o_d[None, :]
    b_q = tl.load(p_q, mask=m_td, other=0.0)
    b_do = tl.load(p_do, mask=m_td, other=0.0)
    p_r = (bos_q + t0) * HQ + i_hq + o_t * HQ
    b_lse = tl.load(lse + p_r, mask=m_t, other=float("inf")) * LOG2E
    b_delta = tl.load(delta + p_r, mask=m_t, other=0.0)
    qk_scale = scale * LOG2E
    b_gq = tl.zeros([BT], dtype=tl.float32)
    b_dgq = tl.zeros([BT], dtype=tl.float32)
    if USE_G:
        p_gq = gc + (bos_k + offset + t0) * HQ + i_hq + o_t * HQ
        b_gq = tl.load(p_gq, mask=m_t, other=0.0).to(tl.float32) * LOG2E
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)

    # key blocks wholly before the tile's first query (no mask), then the diagonal blocks
    i_diag = ((offset + t0) // BS) * BS
    i_end = tl.minimum(offset + t0 + BT, TK)
    for i_s in range(0, i_diag, BS):
        b_dq, b_dgq = _dq_block(k, v, gc, b_q, b_do, b_lse, b_delta, b_gq, b_dq, b_dgq, i_s, i_h, i_hq, bos_k, TK,
                                o_qpos, qk_scale, H, HQ, K, BS, BK, USE_G, DOT_PREC, False)
    for i_s in range(i_diag, i_end, BS):
        b_dq, b_dgq = _dq_block(k, v, gc, b_q, b_do, b_lse, b_delta, b_gq, b_dq, b_dgq, i_s, i_h, i_hq, bos_k, TK,
                                o_qpos, qk_scale, H, HQ, K, BS, BK, USE_G, DOT_PREC, True)

    tl.store(dq + ((bos_q + t0) * HQ + i_hq) * K + o_t[:, None] * (HQ * K) + o_d[None, :],
             (b_dq * scale).to(dq.dtype.element_ty), mask=m_td)
    if USE_G:
        p_g = (bos_k + offset + t0) * HQ + i_hq + o_t * HQ
        b_dgk = tl.load(dgc_k + p_g, mask=m_t, other=0.0)
        tl.store(dgc + p_g, b_dgk + b_dgq, mask=m_t)


_fwd_tuned = triton.autotune(
    configs=_fwd_configs(), key=["BK", "G", "USE_G", "DOT_PREC"], prune_configs_by={"early_config_prune": _prune(1)}
)(parallel_attn_fwd_kernel)
_dkdv_tuned = triton.autotune(
    configs=_bwd_configs(), key=["BK", "G", "USE_G", "DOT_PREC"], prune_configs_by={"early_config_prune": _prune(2)}
)(parallel_attn_bwd_kernel_dkdv)
_dq_tuned = triton.autotune(
    configs=_bwd_dq_configs(), key=["BK", "G", "USE_G", "DOT_PREC"], prune_configs_by={"early_config_prune": _prune(1)}
)(parallel_attn_bwd_kernel_dq)

# Blocks per (kernel, padded head dim, gated): the winners of the autotuner above on an H100 at the
# peers' shapes (T = 1k..16k, bf16). Set GATEDGEN_AUTOTUNE=1 to tune again (dense batches only: for
# packed batches the tile list depends on the tile size).
_AUTOTUNE = os.environ.get("GATEDGEN_AUTOTUNE") == "1" and not _INTERPRET
_BLOCKS = {
    # kind: {BK: (BT, BS, num_warps, num_stages)}
    "fwd": {64: (128, 64, 4, 3), 128: (128, 32, 4, 4), 256: (64, 32, 4, 3)},
    "dkdv": {64: (32, 64, 4, 3), 128: (16, 64, 4, 3), 256: (16, 32, 8, 2)},
    "dq": {64: (64, 32, 4, 3), 128: (128, 64, 8, 2), 256: (64, 32, 8, 2)},
}
_BLOCKS_INTERPRET = {"fwd": (32, 16, 4, 1), "dkdv": (16, 32, 4, 1), "dq": (32, 16, 4, 1)}


def _blocks(kind: str, BK: int) -> dict:
    if _INTERPRET:
        bt, bs, w, st = _BLOCKS_INTERPRET[kind]
    else:
        bt, bs, w, st = _BLOCKS[kind][max(BK, 64)]
    return {"BT": bt, "BS": bs, "num_warps": w, "num_stages": st}


# ----------------------------------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------------------------------


def prepare_chunk_indices(cu_seqlens: torch.Tensor, chunk: int) -> torch.Tensor:
    """[NT, 2] int32 pairs (sequence index, tile index within the sequence) for packed sequences."""
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    pairs = [(n, t) for n, length in enumerate(lens) for t in range(triton.cdiv(length, chunk))]
    if not pairs:
        return torch.zeros(0, 2, dtype=torch.int32, device=cu_seqlens.device)
    return torch.tensor(pairs, dtype=torch.int32, device=cu_seqlens.device)


def _seq_bounds(cu_seqlens: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """bos and eos of the sequence each packed token belongs to ([T] int64, no host sync)."""
    cu = cu_seqlens.long()
    pos = torch.arange(T, device=cu.device)
    seq = torch.searchsorted(cu[1:], pos, right=True)
    return cu[seq], cu[seq + 1]


def gate_cumsum(g: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """gc_t = sum_{l <= t} g_l per sequence, [B, T, HQ] fp32 (accumulated in fp64).

    The scan runs over the innermost dimension of a [B, HQ, T] copy: torch scans a non-innermost
    dimension with one thread per column walking T steps in series (~0.2 us a step on an H100,
    3 ms at T = 16k, measured: it halved the gated forward), the innermost one with block scans.
    """
    cum = g.double().transpose(1, 2).contiguous().cumsum(-1)  # [B, HQ, T]
    if cu_seqlens is not None:
        bos, _ = _seq_bounds(cu_seqlens, g.shape[1])
        cum_pad = torch.cat([torch.zeros_like(cum[..., :1]), cum], dim=-1)
        cum = cum - cum_pad[..., bos]
    return cum.float().transpose(1, 2).contiguous()


def gate_reverse_cumsum(dgc: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """dg_l = sum_{t >= l} dgc_t within each sequence, [B, T, HQ] fp32 (accumulated in fp64)."""
    rev = dgc.double().transpose(1, 2).flip(-1).contiguous().cumsum(-1).flip(-1)  # [B, HQ, T]
    if cu_seqlens is not None:
        _, eos = _seq_bounds(cu_seqlens, dgc.shape[1])
        rev_pad = torch.cat([rev, torch.zeros_like(rev[..., :1])], dim=-1)
        rev = rev - rev_pad[..., eos]
    return rev.float().transpose(1, 2).contiguous()


def _dot_prec(dtype: torch.dtype) -> str:
    # fp32 inputs get exact fp32 products (tf32 would cost ~3e-4 relative error)
    if _INTERPRET and dtype == torch.bfloat16:
        return "upcast"
    return "ieee" if dtype == torch.float32 else "tf32"


def parallel_attn_fwd(q, k, v, gc, scale: float, cu_seqlens):
    """o [B, TQ, HQ, D] (q's dtype) and lse [B, TQ, HQ] fp32 natural log."""
    B, TQ, HQ, K = q.shape
    TK, H = k.shape[1], k.shape[2]
    BK = max(next_power_of_2(K), 16)
    o = torch.empty_like(q)
    lse = torch.empty(B, TQ, HQ, dtype=torch.float32, device=q.device)
    if TQ == 0:
        return o, lse
    common = dict(B=B, H=H, HQ=HQ, G=HQ // H, K=K, BK=BK, USE_G=gc is not None, DOT_PREC=_dot_prec(q.dtype))
    if cu_seqlens is None and _AUTOTUNE:
        def grid(meta):
            return (triton.cdiv(TQ, meta["BT"]) * B * HQ,)

        _fwd_tuned[grid](q, k, v, o, gc, lse, None, None, scale, TQ, TK, 0, IS_VARLEN=False, **common)
        return o, lse
    cfg = _blocks("fwd", BK)
    if cu_seqlens is None:
        chunks, NT = None, triton.cdiv(TQ, cfg["BT"])
        grid = (NT * B * HQ,)
    else:
        chunks = prepare_chunk_indices(cu_seqlens, cfg["BT"])
        NT = chunks.shape[0]
        grid = (NT * HQ,)
    if NT > 0:
        parallel_attn_fwd_kernel[grid](
            q, k, v, o, gc, lse, cu_seqlens, chunks, scale, TQ, TK, NT, IS_VARLEN=cu_seqlens is not None,
            **common, **cfg
        )
    return o, lse


def parallel_attn_bwd(q, k, v, o, gc, lse, do, scale: float, cu_seqlens):
    """dq, dk, dv in the inputs' dtypes and dgc [B, TK, HQ] fp32 (None when ungated)."""
    B, TQ, HQ, K = q.shape
    TK, H = k.shape[1], k.shape[2]
    G = HQ // H
    BK = max(next_power_of_2(K), 16)
    common = dict(B=B, H=H, HQ=HQ, G=G, K=K, BK=BK, USE_G=gc is not None, DOT_PREC=_dot_prec(q.dtype))

    N = B * TQ * HQ
    delta = torch.empty(B, TQ, HQ, dtype=torch.float32, device=q.device)
    BR = 16
    if N > 0:
        parallel_attn_bwd_kernel_preprocess[(triton.cdiv(N, BR),)](o, do, delta, N, K=K, BR=BR, BK=BK)

    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    dgc_k = dgc = None
    if gc is not None:
        dgc_k = torch.empty(B, TK, HQ, dtype=torch.float32, device=q.device)
        # positions before the first query (continuing a cache) only get the key-side sums
        dgc = torch.empty_like(dgc_k) if TQ == TK else None
    if TQ == 0:
        return dq, dk.zero_(), dv.zero_(), (dgc_k.zero_() if dgc_k is not None else None)
    if cu_seqlens is None and _AUTOTUNE:
        def grid_kv(meta):
            return (triton.cdiv(TK, meta["BS"]) * B * H,)

        def grid_q(meta):
            return (triton.cdiv(TQ, meta["BT"]) * B * HQ,)

        _dkdv_tuned[grid_kv](q, k, v, gc, lse, delta, do, dk, dv, dgc_k, None, None, scale, TQ, TK,
                             IS_VARLEN=False, **common)
        if dgc_k is not None and dgc is None:
            dgc = dgc_k.clone()  # the dq kernel writes over the query positions
        _dq_tuned[grid_q](q, k, v, gc, lse, delta, do, dq, dgc_k, dgc, None, None, scale, TQ, TK, 0,
                          IS_VARLEN=False, **common)
        return dq, dk, dv, dgc
    cfg_kv, cfg_q = _blocks("dkdv", BK), _blocks("dq", BK)
    if cu_seqlens is None:
        chunks_kv, chunks_q = None, None
        NS, NT = triton.cdiv(TK, cfg_kv["BS"]), triton.cdiv(TQ, cfg_q["BT"])
        grid_kv, grid_q = (NS * B * H,), (NT * B * HQ,)
    else:
        chunks_kv = prepare_chunk_indices(cu_seqlens, cfg_kv["BS"])
        chunks_q = prepare_chunk_indices(cu_seqlens, cfg_q["BT"])
        NS, NT = chunks_kv.shape[0], chunks_q.shape[0]
        grid_kv, grid_q = (NS * H,), (NT * HQ,)
    varlen = cu_seqlens is not None
    if NS > 0:
        parallel_attn_bwd_kernel_dkdv[grid_kv](
            q, k, v, gc, lse, delta, do, dk, dv, dgc_k, cu_seqlens, chunks_kv, scale, TQ, TK,
            IS_VARLEN=varlen, **common, **cfg_kv)
    if dgc_k is not None and dgc is None:
        dgc = dgc_k.clone()  # the dq kernel writes over the query positions
    if NT > 0:
        parallel_attn_bwd_kernel_dq[grid_q](
            q, k, v, gc, lse, delta, do, dq, dgc_k, dgc, cu_seqlens, chunks_q, scale, TQ, TK, NT,
            IS_VARLEN=varlen, **common, **cfg_q)
    return dq, dk, dv, dgc


class ParallelAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, gc, scale, cu_seqlens):
        # g (raw gates) -> running sums per sequence; gc given directly when continuing a cache
        gc_in = gate_cumsum(g, cu_seqlens) if g is not None else (gc.float().contiguous() if gc is not None else None)
        o, lse = parallel_attn_fwd(q, k, v, gc_in, scale, cu_seqlens)
        ctx.save_for_backward(q, k, v, o, gc_in, lse)
        ctx.scale, ctx.cu_seqlens = scale, cu_seqlens
        ctx.has_g, ctx.has_gc = g is not None, gc is not None
        ctx.g_dtype = g.dtype if g is not None else (gc.dtype if gc is not None else None)
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    def backward(ctx, do, dlse):
        q, k, v, o, gc, lse = ctx.saved_tensors
        dq, dk, dv, dgc = parallel_attn_bwd(q, k, v, o, gc, lse, do.contiguous(), ctx.scale, ctx.cu_seqlens)
        dg = gate_reverse_cumsum(dgc, ctx.cu_seqlens).to(ctx.g_dtype) if ctx.has_g else None
        dgc_out = dgc.to(ctx.g_dtype) if ctx.has_gc else None
        return dq, dk, dv, dg, dgc_out, None, None


def parallel_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
    *,
    gc: torch.Tensor | None = None,
    return_lse: bool = False,
):
    """Gated causal attention for prefill and training (Triton). See ``naive.parallel_attn``.

    Args:
        q: [B, Tq, HQ, D]; k, v: [B, Tk, H, D], Tk >= Tq, D <= 256 (any value, padded in-kernel).
        g: [B, Tq, HQ] raw log gates (fp32, <= 0), Tq == Tk; None = ungated.
        scale: defaults to D ** -0.5.
        cu_seqlens: int [N + 1] packed sequence boundaries (B == 1, Tq == Tk).
        gc: [B, Tk, HQ] running sums of log gates (instead of g; needed when Tq < Tk).
        return_lse: also return lse [B, Tq, HQ] fp32 (natural log).

    Returns:
        o [B, Tq, HQ, D] in q's dtype (and lse when asked). Differentiable in q, k, v, g (and gc).
    """
    _check_shapes(q, k, v)
    if g is not None and gc is not None:
        raise ValueError("give either g (raw log gates) or gc (running sums), not both")
    Tq, Tk = q.shape[1], k.shape[1]
    if g is not None and Tq != Tk:
        raise ValueError("raw gates g need Tq == Tk; pass running sums gc to continue a cache")
    if q.shape[-1] > 256:
        raise ValueError(f"head dim {q.shape[-1]} > 256 is not supported")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError("q, k, v must share one dtype")
    if cu_seqlens is not None and (q.shape[0] != 1 or Tq != Tk):
        raise ValueError("cu_seqlens needs B == 1 and Tq == Tk")
    if scale is None:
        scale = q.shape[-1] ** -0.5
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    o, lse = ParallelAttentionFunction.apply(q, k, v, g, gc, float(scale), cu_seqlens)
    return (o, lse) if return_lse else o
