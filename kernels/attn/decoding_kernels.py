"""Triton kernels of the split-KV decode (split, merge; or split with the merge fused in through a
last-program-done counter), the cache append and the gate re-basing; the math and the host side are in
``kernels.attn.decoding``."""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.utils import LOG2E, pdl_release, pdl_wait


@triton.jit
def _attend_block(
    i_k, end, b_q, b_gq, pos_q, m_m, m_d, p_k, p_v, p_gc, stride_kt, stride_vt, qk_scale,
    b_m, b_acc, b_o,
    HQ: tl.constexpr, D: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr,
    USE_G: tl.constexpr, USE_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """One [BS, D] block of keys/values for all BM query rows: online softmax update in log2 units."""
    o_k = i_k + tl.arange(0, BS)
    m_k = o_k < end
    # [BS, BD]; with D a power of two the mask is constant along D, so the loads stay 16 bytes wide
    if BD == D:
        m_kv = m_k[:, None]
    else:
        m_kv = m_k[:, None] & m_d[None, :]
    b_k = tl.load(p_k + o_k[:, None].to(tl.int64) * stride_kt, mask=m_kv, other=0.0)
    b_v = tl.load(p_v + o_k[:, None].to(tl.int64) * stride_vt, mask=m_kv, other=0.0)
    # [BM, BS]
    if USE_DOT:
        if INTERPRET:  # the CPU interpreter's bf16 tl.dot is wrong: multiply the same values in fp32
            b_s = tl.dot(b_q.to(tl.float32), tl.trans(b_k.to(tl.float32)), input_precision="ieee")
        else:
            b_s = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION)
    else:
        b_s = tl.sum(b_q[:, None, :].to(tl.float32) * b_k[None, :, :].to(tl.float32), 2)
    b_s = b_s * qk_scale
    if USE_G:
        b_gk = tl.load(p_gc[:, None] + o_k[None, :] * HQ, mask=m_m[:, None] & m_k[None, :], other=0.0)
        b_s += b_gq[:, None] - b_gk * LOG2E
    b_s = tl.where((o_k[None, :] <= pos_q[:, None]) & m_k[None, :], b_s, float("-inf"))

    b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
    # rows that have seen no visible key yet keep m = -inf: shift by 0 instead (no NaN)
    b_m_safe = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)
    b_r = tl.exp2(b_m - b_m_safe)
    b_p = tl.exp2(b_s - b_m_safe[:, None])
    b_acc = b_acc * b_r + tl.sum(b_p, 1)
    if USE_DOT:
        if INTERPRET:
            b_pv = tl.dot(b_p.to(b_v.dtype).to(tl.float32), b_v.to(tl.float32), input_precision="ieee")
        else:
            b_pv = tl.dot(b_p.to(b_v.dtype), b_v, input_precision=DOT_PRECISION)
    else:
        b_pv = tl.sum(b_p[:, :, None] * b_v[None, :, :].to(tl.float32), 1)
    b_o = b_o * b_r[:, None] + b_pv
    return b_m_new, b_acc, b_o


@triton.jit
def _merge_rows(
    o_part, lse_part, o, i_b, i_h,
    TQ: tl.constexpr, HQ: tl.constexpr, G: tl.constexpr, D: tl.constexpr, NS: tl.constexpr,
    MR: tl.constexpr, BNS: tl.constexpr, BD: tl.constexpr,
):
    """Merge the NS partials of the Tq * G rows of (b, KV head h) into o, exactly through their
    log2-sum-exp: one pass over the slices in order, BNS at a time, rescaling like online softmax.
    Partials come from other programs: loaded through L2 (.cg), never a stale L1 line."""
    o_r = tl.arange(0, MR)
    m_r = o_r < TQ * G
    i_row = (i_b * TQ + o_r // G).to(tl.int64) * HQ + i_h * G + o_r % G  # [MR]
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    b_m = tl.full([MR], float("-inf"), dtype=tl.float32)
    b_den = tl.zeros([MR], dtype=tl.float32)
    b_o = tl.zeros([MR, BD], dtype=tl.float32)
    for i_s in range(0, NS, BNS):
        o_s = i_s + tl.arange(0, BNS)
        m_rs = m_r[:, None] & (o_s < NS)[None, :]
        i_rs = i_row[:, None] * NS + o_s[None, :]  # [MR, BNS]
        b_lse = tl.load(lse_part + i_rs, mask=m_rs, other=float("-inf"), cache_modifier=".cg")
        # issued together with the lse load (no dependency); a neutral partial's unwritten row is
        # read but discarded by the where below
        p_op = o_part + i_rs[:, :, None] * D + o_d[None, None, :]
        if BD == D:  # a mask constant along D keeps the loads 16 bytes wide
            m_op = m_rs[:, :, None]
        else:
            m_op = m_rs[:, :, None] & m_d[None, None, :]
        b_op = tl.load(p_op, mask=m_op, other=0.0, cache_modifier=".cg")
        b_op = tl.where((b_lse > float("-inf"))[:, :, None], b_op, 0.0)
        b_m_new = tl.maximum(b_m, tl.max(b_lse, 1))
        b_m_safe = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)
        b_r = tl.exp2(b_m - b_m_safe)
        b_w = tl.exp2(b_lse - b_m_safe[:, None])  # [MR, BNS], 0 for neutral partials
        b_den = b_den * b_r + tl.sum(b_w, 1)
        b_o = b_o * b_r[:, None] + tl.sum(b_w[:, :, None] * b_op, 1)
        b_m = b_m_new
    b_o = b_o / tl.where(b_den > 0, b_den, 1.0)[:, None]
    tl.store(o + i_row[:, None] * D + o_d[None, :], b_o.to(o.dtype.element_ty), mask=m_r[:, None] & m_d[None, :])


@triton.jit
def decode_split_kernel(
    q,
    k,
    v,
    gc,
    o,
    o_part,
    lse_part,
    counters,
    cache_seqlens,
    qk_scale,
    stride_kb,
    stride_kt,
    stride_vb,
    stride_vt,
    Tmax,
    TQ: tl.constexpr,
    H: tl.constexpr,
    HQ: tl.constexpr,
    G: tl.constexpr,
    D: tl.constexpr,
    NS: tl.constexpr,
    BM: tl.constexpr,
    BS: tl.constexpr,
    BD: tl.constexpr,
    USE_G: tl.constexpr,
    USE_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    FUSE_MERGE: tl.constexpr,
    MR: tl.constexpr,
    BNS: tl.constexpr,
    INTERPRET: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    # KV head fastest: programs running together read the same tokens of neighbouring heads (one
    # DRAM stretch of H * D elements per token) and share the gate sectors of gc[b, t, :]
    i_h, i_s, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    pdl_release(USE_PDL)  # PDL: the next kernel may be scheduled; everything here waits for the last one
    pdl_wait(USE_PDL)
    L = tl.load(cache_seqlens + i_b).to(tl.int32)
    # slice i_s of [0, L): NS slices of whole BS-blocks
    n_chunk = tl.cdiv(tl.cdiv(L, NS), BS) * BS
    start = i_s * n_chunk
    end = tl.minimum(start + n_chunk, L)

    # query rows r = t * G + g of this KV head
    o_m = tl.arange(0, BM)
    i_t = o_m // G
    i_hq = i_h * G + o_m % G
    m_m = o_m < TQ * G
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    # row index into [B, Tq, HQ]
    i_row = (i_b * TQ + i_t).to(tl.int64) * HQ + i_hq

    if start < L:
        pos_q = L - TQ + i_t  # [BM]
        p_q = q + i_row[:, None] * D + o_d[None, :]
        b_q = tl.load(p_q, mask=m_m[:, None] & m_d[None, :], other=0.0)
        if USE_G:
            p_gq = gc + (i_b.to(tl.int64) * Tmax + pos_q) * HQ + i_hq
            b_gq = tl.load(p_gq, mask=m_m, other=0.0).to(tl.float32) * LOG2E
            p_gc = gc + i_b.to(tl.int64) * Tmax * HQ + i_hq  # [BM], + key position * HQ
        else:
            b_gq = tl.zeros([BM], dtype=tl.float32)
            p_gc = gc
        p_k = k + i_b.to(tl.int64) * stride_kb + i_h * D + o_d[None, :]
        p_v = v + i_b.to(tl.int64) * stride_vb + i_h * D + o_d[None, :]

        b_m = tl.full([BM], float("-inf"), dtype=tl.float32)
        b_acc = tl.zeros([BM], dtype=tl.float32)
        b_o = tl.zeros([BM, BD], dtype=tl.float32)
        if INTERPRET:
            # the CPU interpreter (numpy >= 2) cannot use a loaded value as a range() bound
            i_k = start
            while i_k < end:
                b_m, b_acc, b_o = _attend_block(
                    i_k, end, b_q, b_gq, pos_q, m_m, m_d, p_k, p_v, p_gc, stride_kt, stride_vt, qk_scale,
                    b_m, b_acc, b_o, HQ, D, BS, BD, USE_G, USE_DOT, DOT_PRECISION, INTERPRET,
                )
                i_k += BS
        else:
            for i_k in range(start, end, BS):
                b_m, b_acc, b_o = _attend_block(
                    i_k, end, b_q, b_gq, pos_q, m_m, m_d, p_k, p_v, p_gc, stride_kt, stride_vt, qk_scale,
                    b_m, b_acc, b_o, HQ, D, BS, BD, USE_G, USE_DOT, DOT_PRECISION, INTERPRET,
                )

        b_o = b_o / tl.where(b_acc > 0, b_acc, 1.0)[:, None]
        if NS == 1:
            p_o = o + i_row[:, None] * D + o_d[None, :]
            tl.store(p_o, b_o.to(o.dtype.element_ty), mask=m_m[:, None] & m_d[None, :])
        else:
            # -inf for a row that saw no key in this slice
            b_lse = tl.where(b_acc > 0, b_m + tl.log2(tl.where(b_acc > 0, b_acc, 1.0)), float("-inf"))
            p_op = o_part + (i_row[:, None] * NS + i_s) * D + o_d[None, :]
            tl.store(p_op, b_o, mask=m_m[:, None] & m_d[None, :])
            tl.store(lse_part + i_row * NS + i_s, b_lse, mask=m_m)
    else:
        # slice beyond this sequence's length: neutral partial, nothing read
        tl.store(lse_part + i_row * NS + i_s, tl.full([BM], float("-inf"), dtype=tl.float32), mask=m_m)

    if FUSE_MERGE:  # (the host sets it only when NS > 1)
        # last-program-done: every warp's partial stores are issued before the barrier, and the
        # release half of the counter increment publishes them (CUTLASS's semaphore pattern); the
        # program that brings the count to NS (acquire) merges all slices of (b, h) in slice order
        # (deterministic, whichever program is last) and resets the counter for the next launch
        tl.debug_barrier()
        p_cnt = counters + i_b * H + i_h
        n_done = tl.atomic_add(p_cnt, 1, sem="acq_rel", scope="gpu")
        if n_done == NS - 1:
            tl.debug_barrier()
            _merge_rows(o_part, lse_part, o, i_b, i_h, TQ, HQ, G, D, NS, MR, BNS, BD)
            tl.store(p_cnt, 0)


@triton.jit
def decode_merge_kernel(
    o_part,
    lse_part,
    o,
    D: tl.constexpr,
    NS: tl.constexpr,
    BD: tl.constexpr,
    BNS: tl.constexpr,
):
    # one output row (b, t, hq); its NS partials [NS, D] are contiguous
    i_r = tl.program_id(0).to(tl.int64)
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    b_mx = tl.full([BNS], float("-inf"), dtype=tl.float32)
    for i_s in range(0, NS, BNS):
        o_s = i_s + tl.arange(0, BNS)
        b_lse = tl.load(lse_part + i_r * NS + o_s, mask=o_s < NS, other=float("-inf"))
        b_mx = tl.maximum(b_mx, b_lse)
    b_m = tl.max(b_mx, 0)
    b_m = tl.where(b_m == float("-inf"), 0.0, b_m)
    b_den = tl.zeros([BNS], dtype=tl.float32)
    b_o = tl.zeros([BD], dtype=tl.float32)
    for i_s in range(0, NS, BNS):
        o_s = i_s + tl.arange(0, BNS)
        b_lse = tl.load(lse_part + i_r * NS + o_s, mask=o_s < NS, other=float("-inf"))
        m_s = b_lse > float("-inf")  # neutral partials wrote no output: never read it
        b_w = tl.exp2(b_lse - b_m)
        b_den += b_w
        p_op = o_part + (i_r * NS + o_s[:, None]) * D + o_d[None, :]
        b_op = tl.load(p_op, mask=m_s[:, None] & m_d[None, :], other=0.0)
        b_o += tl.sum(b_w[:, None] * b_op, 0)
    b_o = b_o / tl.sum(b_den, 0)
    tl.store(o + i_r * D + o_d, b_o.to(o.dtype.element_ty), mask=m_d)


@triton.jit
def _log_gates(p_f, o_t, i_hq, m_tg, stride_ft, LOGITS: tl.constexpr):
    """[BT, BG] fp32 log gates of tokens o_t (0 where masked); with LOGITS the input holds forget-gate
    logits and g = logsigmoid(f) = min(f, 0) - log(1 + exp(-|f|))."""
    b_g = tl.load(p_f + o_t.to(tl.int64)[:, None] * stride_ft + i_hq[None, :], mask=m_tg, other=0.0).to(tl.float32)
    if LOGITS:
        b_g = tl.minimum(b_g, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(b_g)))
        b_g = tl.where(m_tg, b_g, 0.0)
    return b_g


@triton.jit
def append_kv_kernel(
    k_cache, v_cache, gc_cache, k, v, f, cache_seqlens,
    stride_kcb, stride_kct, stride_vcb, stride_vct,
    stride_kb, stride_kt, stride_vb, stride_vt, stride_fb, stride_ft,
    Tmax, TN, CHUNK,
    H: tl.constexpr, HQ: tl.constexpr, G: tl.constexpr, D: tl.constexpr,
    BT: tl.constexpr, BP: tl.constexpr, BD: tl.constexpr, BG: tl.constexpr,
    USE_G: tl.constexpr, LOGITS: tl.constexpr, USE_PDL: tl.constexpr = False,
):
    # program (c, b, h): tokens [c * CHUNK, (c + 1) * CHUNK) of sequence b (CHUNK a multiple of BT): the
    # keys/values of KV head h and the running sums of its G query heads. The running sum at a chunk's
    # start is gc[L - 1] plus the sum of all earlier tokens' gates, which every program recomputes
    # from the gate input (cheap: G values per token, in [BP, BG] tiles), so chunks need no
    # communication and a long prompt is copied by many programs at once
    i_c, i_b, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    pdl_release(USE_PDL)  # PDL: the next kernel may be scheduled; everything here waits for the last one
    pdl_wait(USE_PDL)
    L = tl.load(cache_seqlens + i_b).to(tl.int32)
    t0 = i_c * CHUNK
    t1 = tl.minimum(t0 + CHUNK, TN)
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    i_b64 = i_b.to(tl.int64)
    p_kc = k_cache + i_b64 * stride_kcb + i_h * D
    p_vc = v_cache + i_b64 * stride_vcb + i_h * D
    p_k = k + i_b64 * stride_kb + i_h * D
    p_v = v + i_b64 * stride_vb + i_h * D
    # while loops: the CPU interpreter cannot take a run-time value as a range() bound
    i_t = t0
    while i_t < t1:
        o_t = i_t + tl.arange(0, BT)
        m_t = (o_t < t1) & (L + o_t < Tmax)
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
        p_f = f + i_b64 * stride_fb
        b_base = tl.load(p_gc + (L - 1) * HQ, mask=m_g & (L > 0), other=0.0)
        # sum of the gates of the tokens before this chunk (a tree sum per tile, tiles in order)
        i_t = 0
        while i_t < t0:
            o_t = i_t + tl.arange(0, BP)
            b_g = _log_gates(p_f, o_t, i_hq, (o_t < t0)[:, None] & m_g[None, :], stride_ft, LOGITS)
            b_base = b_base + tl.sum(b_g, 0)
            i_t += BP
        i_t = t0
        while i_t < t1:
            o_t = i_t + tl.arange(0, BT)
            m_t = o_t < t1
            b_g = _log_gates(p_f, o_t, i_hq, m_t[:, None] & m_g[None, :], stride_ft, LOGITS)
            b_c = tl.cumsum(b_g, 0)
            m_st = (m_t & (L + o_t < Tmax))[:, None] & m_g[None, :]
            tl.store(p_gc[None, :] + (L + o_t)[:, None] * HQ, b_base[None, :] + b_c, mask=m_st)
            b_base = b_base + tl.sum(b_g, 0)
            i_t += BT


@triton.jit
def rebase_gate_kernel(gc, cache_seqlens, Tmax, HQ: tl.constexpr, BT: tl.constexpr, BH: tl.constexpr):
    # program (b, head block) owns all positions of its heads: it reads gc[L - 1] before it overwrites
    # it, and no other program touches these entries, so there is no race
    i_b, i_hb = tl.program_id(0), tl.program_id(1)
    L = tl.load(cache_seqlens + i_b).to(tl.int32)
    o_h = i_hb * BH + tl.arange(0, BH)
    m_h = o_h < HQ
    p_gc = gc + i_b.to(tl.int64) * Tmax * HQ + o_h
    b_base = tl.load(p_gc + (L - 1) * HQ, mask=m_h & (L > 0), other=0.0)
    i_t = 0
    while i_t < L:  # (a while loop: the CPU interpreter cannot take L as a range() bound)
        o_t = i_t + tl.arange(0, BT)
        m_th = (o_t < L)[:, None] & m_h[None, :]
        p = p_gc[None, :] + o_t[:, None].to(tl.int64) * HQ
        b_gc = tl.load(p, mask=m_th, other=0.0)
        tl.store(p, b_gc - b_base[None, :], mask=m_th)
        i_t += BT
