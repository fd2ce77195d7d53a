"""Hopper (sm_90) forward of gated causal attention, written in Gluon (Triton's lower-level language:
explicit layouts, shared memory, TMA, mbarriers, asynchronous warpgroup MMAs, warp specialisation).

Same math and outputs as ``parallel_fwd.parallel_attn_fwd_kernel`` (o and the natural-log lse; the
module docstring there explains the two score representations). What Gluon lets this kernel do that
Triton 3.6's compiler does not do for the ``tl`` kernel is FlashAttention-3's schedule:

* warp specialisation: a producer warpgroup issues every TMA load (the two warpgroups' query rows, then
  K and V block by block into STAGES-deep rings, a ready and an empty mbarrier per stage) and gives
  its registers to two consumer warpgroups (setmaxnreg 24 / 240 / 240), each owning 64 query rows of the
  program's 128. The consumers issue their products in turns (ping-pong, two mbarriers), so one's
  softmax runs while the other's products are on the tensor cores. The producer is Gluon's default
  partition and both consumers are worker partitions: with the first consumer as the default
  partition, values of the kernel's prologue stayed live in it, and with the half last block ptxas
  spilled one of them (35 local loads, D=64 and 128). H100, 2026-11-24, kernel from graph replays,
  same outputs bit for bit: gated +7.0% at 16x128 T=1k, +4.2% at 32x64 T=1k, 0 to +2.3% at 4k and 16k.
* within a consumer, the softmax of block j overlaps the PV product of block j - 1 (FA3's order):

      S(j) = Q K(j)^T (async);  O *= alpha(j-1);  O += P(j-1) V(j-1) (async);  wait S(j);  release K(j)
      softmax of S(j) -> P(j) (16-bit registers, the next PV operand), alpha(j);  wait PV;  release V(j-1)

  (ptxas would hoist that PV wait above the exponentials; a shared-memory store holds it: ``_step``)

* with HALF (short sequences, host rule), a warpgroup whose rows all precede the middle of the tile's
  last key block (the first one on the diagonal of an aligned tile) runs that block on its first BN / 2
  keys only: an S and a PV product of half the width, half the exponentials.

* persistent programs, one per SM, each running a host-made list of tiles (``parallel_hopper._schedule``:
  a few heads at a time, longest tiles first, balanced by the longest-first greedy rule, so that the
  programs running together share their heads' keys in L2). The producer runs on into the next tile: the
  K/V rings' positions carry over, and the next tile's query rows load into a second buffer while a
  tile runs (NQ = 2).

The keys' gate sums come per block from the per-head base-2 rows (gct, as the tl kernel's unmasked
blocks), loaded by the producer into the K ring's stage beside the keys; the queries' come from the
same rows (one source for both sides of gq' - gk'; on the diagonal gq' joins the row max: ``_softmax``).

Packed batches (cu_seqlens, B = 1) run through the same loops: a tile is a chunk of BM rows of one
sequence, and its loads start at the sequence's first row (the keys, gated, up to three rows earlier, so
that the gate sums' TMA loads start on 16 bytes; those keys are masked). Blocks that run past the
sequence's end read the next sequence's rows, which the causal mask hides (keys) or which are not stored
(queries: a tile that ends past its sequence stores its output from registers, masked, instead of by TMA).

Scope: bf16/fp16, head dim 64 or 128, Tq <= Tk (packed: Tq = Tk), on sm_90. The host
(``parallel.parallel_attn_fwd``) takes the ``tl`` kernel everywhere else.
There is no CPU interpreter for Gluon: the tests compile it for sm_90 on the CPU and run it on the GPU.
The host side (dispatch rule, tile schedule, descriptors, launch) is ``parallel_hopper``; the consumers'
per-block steps are ``parallel_fwd_hopper_step``.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma_wait,
)

from kernels.attn.parallel_fwd_hopper_step import (
    _issue_qk,
    _key_gates,
    _last_pv,
    _softmax,
    _step,
    _store_o,
    _turn_pass,
    _turn_wait,
)
from kernels.utils import LN2, LOG2E


@gluon.jit
def _tile(i_p, tiles, TQ, TK, B: gl.constexpr, HQ: gl.constexpr, G: gl.constexpr, BM: gl.constexpr,
          BN: gl.constexpr, IS_VARLEN: gl.constexpr, KA: gl.constexpr):
    """Tile i_p: the batch, query head, key head, the first query row of its sequence in the batch (bos)
    and the first key row (kb), the query and key counts from there, the tile's first query row and the
    number of key blocks the tile sees. Dense: i_p = i_t * B * HQ + (batch x query head), bos = kb = 0.
    Packed (B = 1): i_p = i_c * HQ + query head, with tiles[i_c] = (bos, length, first row) of chunk i_c
    (host-made: parallel_hopper._varlen_tiles); the keys start at bos rounded down to a multiple of KA,
    so that the TMA loads of the key gate sums start on 16 bytes, and the KA - 1 or fewer keys of the
    previous sequence before bos are masked (``_softmax``'s LO)."""
    if IS_VARLEN:
        i_c = i_p // HQ
        i_b = 0
        i_hq = i_p % HQ
        bos = gl.load(tiles + 3 * i_c)
        TQ = gl.load(tiles + 3 * i_c + 1)
        t0 = gl.load(tiles + 3 * i_c + 2)
        kb = bos - bos % KA
        TK = TQ + (bos - kb)
    else:
        i_bh = i_p % (B * HQ)
        i_b, i_hq = i_bh // HQ, i_bh % HQ
        bos = 0
        kb = 0
        t0 = (i_p // (B * HQ)) * BM
    n_blk = gl.cdiv(gl.minimum(TK - TQ + t0 + BM, TK), BN)  # query row r sits at key position TK - TQ + r
    return i_b, i_hq, i_hq // G, bos, kb, TQ, TK, t0, n_blk


@gluon.jit
def _producer(desc_q, desc_k, desc_v, desc_g, q_smem, k_smem, v_smem, g_smem, q_ready, q_empty, k_ready, k_empty,
              v_ready, v_empty, sched, tiles, k0, k1, TQ, TK, B: gl.constexpr, HQ: gl.constexpr, G: gl.constexpr,
              BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr, NQ: gl.constexpr,
              USE_G: gl.constexpr, IS_VARLEN: gl.constexpr, KA: gl.constexpr):
    """The default partition (one warpgroup at 24 registers; each TMA copy and barrier update is issued by
    one thread), running ahead of the consumers through this program's tiles. Per tile: the two
    warpgroups' query rows into query buffer it % NQ (free once both consumers released it; NQ = 2
    lets the next tile's rows load while a tile runs), then K and V block by block into STAGES-deep
    rings, whose position c runs on across tiles; gated, a key block's base-2 gate sums ride with it
    (same stage, same barrier). A stage is refilled once both consumers released it
    (empty barriers count two arrivals; a fresh barrier passes the first wait of parity 1). Rows are those of
    the tile's sequence from its first (bos; keys from kb, ``_tile``); a packed batch's blocks may run into the
    neighbouring sequences' rows, which the consumers mask (keys) or do not store (queries)."""
    BMW: gl.constexpr = BM // 2
    c = 0
    it = 0
    for k in range(k0, k1):
        i_b, i_hq, i_h, bos, kb, _, _, t0, n_blk = _tile(gl.load(sched + k), tiles, TQ, TK, B, HQ, G, BM, BN,
                                                          IS_VARLEN, KA)
        qb = it % NQ
        mbarrier.wait(q_empty.index(qb), ((it // NQ) & 1) ^ 1)
        mbarrier.expect(q_ready.index(qb), 2 * desc_q.block_type.nbytes)
        tma.async_copy_global_to_shared(desc_q, [i_b, bos + t0, i_hq * D], q_ready.index(qb),
                                        q_smem.index(2 * qb))
        tma.async_copy_global_to_shared(desc_q, [i_b, bos + t0 + BMW, i_hq * D], q_ready.index(qb),
                                        q_smem.index(2 * qb + 1))
        for i_blk in range(n_blk):
            s = (c + i_blk) % STAGES
            ph = (((c + i_blk) // STAGES) & 1) ^ 1
            mbarrier.wait(k_empty.index(s), ph)
            if USE_G:
                mbarrier.expect(k_ready.index(s), desc_k.block_type.nbytes + desc_g.block_type.nbytes)
                tma.async_copy_global_to_shared(desc_g, [i_b * HQ + i_hq, kb + i_blk * BN], k_ready.index(s),
                                                g_smem.index(s))
            else:
                mbarrier.expect(k_ready.index(s), desc_k.block_type.nbytes)
            tma.async_copy_global_to_shared(desc_k, [i_b, kb + i_blk * BN, i_h * D], k_ready.index(s),
                                            k_smem.index(s))
            mbarrier.wait(v_empty.index(s), ph)
            mbarrier.expect(v_ready.index(s), desc_v.block_type.nbytes)
            tma.async_copy_global_to_shared(desc_v, [i_b, kb + i_blk * BN, i_h * D], v_ready.index(s),
                                            v_smem.index(s))
        c += n_blk
        it += 1


@gluon.jit
def _consumer_tile(desc_o, o, q_smem, k_smem, v_smem, g_smem, q_ready, q_empty, k_ready, k_empty, v_ready, v_empty,
                   turn, l_smem, gct, lse, i_b, i_hq, bos, kb, TQ, TK, t0, n_blk, c, it, TQB, TKP, qk_scale,
                   WG: gl.constexpr, HQ: gl.constexpr, BMW: gl.constexpr, BN: gl.constexpr, D: gl.constexpr,
                   STAGES: gl.constexpr, NQ: gl.constexpr, USE_G: gl.constexpr, IS_VARLEN: gl.constexpr,
                   HALF: gl.constexpr):
    """One warpgroup, one tile: query rows [t0 + WG * BMW, + BMW) of the sequence at row bos of batch i_b
    (TQ queries, the last of TK keys from row kb) against the tile's key blocks, which sit at ring positions c, c + 1,
    ...; the query rows in buffer it % NQ, which also stages the output for its TMA store. With two
    buffers the previous tile's is released here once that store has read it; with one, at the end of the
    tile. TQB: query rows per batch of o and lse."""
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BN, 16])
    s_half: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                     instr_shape=[16, BN // 2, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, D, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    offset = TK - TQ  # query row r sits at absolute key position offset + r
    g_col0 = (i_b * HQ + i_hq).to(gl.int64) * TKP + kb  # the first key's place in its row of the base-2 gate sums
    r0 = t0 + WG * BMW
    o_t = r0 + gl.arange(0, BMW, layout=row_s)
    o_qpos = offset + o_t  # positions of the rows among the keys
    b_gq = gl.zeros([BMW], gl.float32, row_s)
    b_g0 = 0.0
    if USE_G:
        # base-2 gate sums of the rows relative to the first row's (g0), from the same rows as the keys'
        # (one source for both sides of gq' - gk')
        # (clamped: the rows of a second warpgroup may all lie past the sequence's end)
        b_g0 = gl.load(gct + g_col0 + gl.minimum(offset + r0, TK - 1))
        b_gq = gl.load(gct + g_col0 + o_qpos, mask=o_t < TQ, other=0.0) - b_g0
    # blocks [0, n_off) precede every row of this warpgroup: no mask, scores without the row constant
    n_off = (offset + r0) // BN

    qb = it % NQ
    mbarrier.wait(q_ready.index(qb), (it // NQ) & 1)
    q = q_smem.index(2 * qb + WG).reshape([BMW, D])
    b_m = gl.full([BMW], float("-inf"), gl.float32, row_s)
    b_l = gl.zeros([BMW], gl.float32, row_s)

    # block 0 (nothing to overlap with yet)
    _turn_wait(turn, c + it, WG)  # issue groups: one per key block and the last PV, c + it before this tile
    b_s = _issue_qk(q, k_smem, k_ready, c, s_layout, BMW, BN, BN, D, STAGES)
    _turn_pass(turn, WG)
    if NQ == 2:
        if it > 0:
            tma.store_wait(pendings=0)  # the previous tile's output has left its query buffer
            mbarrier.arrive(q_empty.index(1 - qb), count=1)
    b_s = warpgroup_mma_wait(num_outstanding=0, deps=(b_s,))
    b_gk = _key_gates(g_smem, b_g0, c, s_layout, BN, BN, STAGES, USE_G)
    mbarrier.arrive(k_empty.index(c % STAGES), count=1)
    if n_off > 0:
        b_p, b_m, b_l, b_r = _softmax(b_s, b_m, b_l, b_gk, b_gq, o_qpos, 0, qk_scale, offset, s_layout, BN, BN,
                                      USE_G, False, IS_VARLEN)
    else:
        b_m += b_gq  # stays -inf: the per-row representation from the start
        b_p, b_m, b_l, b_r = _softmax(b_s, b_m, b_l, b_gk, b_gq, o_qpos, 0, qk_scale, offset, s_layout, BN, BN,
                                      USE_G, True, IS_VARLEN)
    b_pa = gl.convert_layout(b_p.to(v_smem.dtype), p_layout)
    b_o = gl.zeros([BMW, D], gl.float32, o_layout)

    for i_blk in range(1, n_off):
        b_o, b_pa, b_m, b_l, b_r = _step(q, k_smem, v_smem, g_smem, k_ready, k_empty, v_ready, v_empty, turn, l_smem,
                                         b_g0, b_gq, b_o, b_pa, b_m, b_l, b_r, o_qpos, c, it, i_blk, qk_scale,
                                         s_layout, BMW, BN, BN, D, STAGES, USE_G, False, WG)
    if n_off > 0:
        b_m += b_gq  # back to the per-row representation: m = m' + (gq_i - g0)
    # the tile's last key block reaches BN keys past its first; when every row of this warpgroup precedes
    # the block's middle (the first warpgroup on the diagonal of an aligned tile), its second half is
    # masked for all of them: that block takes only its first BN / 2 keys (``_step`` with NK = BN / 2)
    n_full = n_blk
    if HALF:
        half = (n_blk > 1) & (offset + r0 + BMW <= (n_blk - 1) * BN + BN // 2)
        n_full -= half.to(gl.int32)
    for i_blk in range(gl.maximum(n_off, 1), n_full):
        b_o, b_pa, b_m, b_l, b_r = _step(q, k_smem, v_smem, g_smem, k_ready, k_empty, v_ready, v_empty, turn, l_smem,
                                         b_g0, b_gq, b_o, b_pa, b_m, b_l, b_r, o_qpos, c, it, i_blk, qk_scale,
                                         s_layout, BMW, BN, BN, D, STAGES, USE_G, True, WG)
    r = c + n_blk - 1
    if HALF:
        if half:
            b_o, b_ph, b_m, b_l, b_rh = _step(q, k_smem, v_smem, g_smem, k_ready, k_empty, v_ready, v_empty, turn,
                                              l_smem, b_g0, b_gq, b_o, b_pa, b_m, b_l, b_r, o_qpos, c, it, n_blk - 1,
                                              qk_scale, s_half, BMW, BN, BN // 2, D, STAGES, USE_G, True, WG)
            b_o = _last_pv(b_ph, v_smem, v_ready, v_empty, turn, b_o, b_rh, r, it, BN, D, STAGES, WG)
        else:
            b_o = _last_pv(b_pa, v_smem, v_ready, v_empty, turn, b_o, b_r, r, it, BN, D, STAGES, WG)
    else:
        b_o = _last_pv(b_pa, v_smem, v_ready, v_empty, turn, b_o, b_r, r, it, BN, D, STAGES, WG)

    # epilogue: o = acc / l through this warpgroup's query buffer and a TMA store (clips rows past the
    # batch's TQB), waited for at the next tile (NQ = 2) or here (NQ = 1); natural-log lse = (m2 + log2 l) ln 2
    # with m2 the true base-2 row max
    b_o = b_o / gl.convert_layout(b_l, gl.SliceLayout(1, o_layout))[:, None]
    if IS_VARLEN:
        if r0 + BMW > TQ:
            # the sequence ends inside these rows and the next one's follow: a masked store from registers
            o_r = r0 + gl.arange(0, BMW, layout=gl.SliceLayout(1, o_layout))
            o_d = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
            p_o = o + ((bos + o_r).to(gl.int64) * HQ + i_hq) * D
            gl.store(p_o[:, None] + o_d[None, :], b_o.to(desc_o.dtype), mask=(o_r < TQ)[:, None])
        else:
            _store_o(desc_o, q, q_smem.index(2 * qb + WG), b_o, i_b, bos + r0, i_hq * D)
    else:
        _store_o(desc_o, q, q_smem.index(2 * qb + WG), b_o, i_b, r0, i_hq * D)
    b_lse = (b_m + gl.log2(b_l)) * LN2
    gl.store(lse + ((i_b * TQB + bos + o_t).to(gl.int64) * HQ + i_hq), b_lse, mask=o_t < TQ)
    if NQ == 1:
        tma.store_wait(pendings=0)
        mbarrier.arrive(q_empty.index(0), count=1)


@gluon.jit
def _consumer(desc_o, o, q_smem, k_smem, v_smem, g_smem, q_ready, q_empty, k_ready, k_empty, v_ready, v_empty, turn,
              l_smem, gct, lse, sched, tiles, k0, k1, TQ, TK, TKP, qk_scale, WG: gl.constexpr, B: gl.constexpr,
              HQ: gl.constexpr, G: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr,
              STAGES: gl.constexpr, NQ: gl.constexpr, USE_G: gl.constexpr, IS_VARLEN: gl.constexpr,
              KA: gl.constexpr, HALF: gl.constexpr):
    """One warpgroup (WG = 0 or 1: the first or second BM / 2 rows of every tile) through this program's
    tiles, in the producer's order."""
    c = 0
    it = 0
    for k in range(k0, k1):
        i_b, i_hq, _, bos, kb, TQ_t, TK_t, t0, n_blk = _tile(gl.load(sched + k), tiles, TQ, TK, B, HQ, G, BM, BN,
                                                             IS_VARLEN, KA)
        _consumer_tile(desc_o, o, q_smem, k_smem, v_smem, g_smem, q_ready, q_empty, k_ready, k_empty, v_ready,
                       v_empty, turn, l_smem, gct, lse, i_b, i_hq, bos, kb, TQ_t, TK_t, t0, n_blk, c, it, TQ, TKP,
                       qk_scale, WG, HQ, BM // 2, BN, D, STAGES, NQ, USE_G, IS_VARLEN, HALF)
        c += n_blk
        it += 1
    tma.store_wait(pendings=0)


@gluon.jit
def parallel_attn_fwd_hopper_kernel(desc_q, desc_k, desc_v, desc_g, desc_o, o, gct, lse, sched, tiles, scale, TQ, TK,
                                    TKP, B: gl.constexpr, H: gl.constexpr, HQ: gl.constexpr, G: gl.constexpr,
                                    D: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, STAGES: gl.constexpr,
                                    NQ: gl.constexpr, USE_G: gl.constexpr, IS_VARLEN: gl.constexpr,
                                    KA: gl.constexpr, HALF: gl.constexpr):
    # o: the output's pointer, for the packed batches' partial tiles (IS_VARLEN; else unused); tiles: the
    # packed batches' chunk table (_tile); KA: their keys' alignment, in keys (_tile)
    # persistent: this program runs the tiles sched[k0:k1] (host-made, _schedule) in that order
    i_p = gl.program_id(0)
    k0 = gl.load(sched + i_p)
    k1 = gl.load(sched + i_p + 1)

    # NQ query buffers of two warpgroup halves each: [2 * buffer + WG]
    q_smem = gl.allocate_shared_memory(desc_q.dtype, [2 * NQ] + desc_q.block_type.shape, desc_q.layout)
    k_smem = gl.allocate_shared_memory(desc_k.dtype, [STAGES] + desc_k.block_type.shape, desc_k.layout)
    v_smem = gl.allocate_shared_memory(desc_v.dtype, [STAGES] + desc_v.block_type.shape, desc_v.layout)
    if USE_G:  # the key blocks' gate sums, [1, BN] fp32 per stage of the K ring
        g_smem = gl.allocate_shared_memory(desc_g.dtype, [STAGES] + desc_g.block_type.shape, desc_g.layout)
    else:
        g_smem = k_smem
    q_ready = gl.allocate_shared_memory(gl.int64, [NQ, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [NQ, 1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())  # [WG]: its turn to issue
    # [WG]: the consumers' row sums, stored to keep the PV wait below the softmax (_step); never read
    l_smem = gl.allocate_shared_memory(gl.float32, [2, BM // 2], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    for i in gl.static_range(NQ):
        mbarrier.init(q_ready.index(i), count=1)
        mbarrier.init(q_empty.index(i), count=2)  # one arrival per consumer warpgroup
    for i in gl.static_range(2):
        mbarrier.init(turn.index(i), count=1)
    for s in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(s), count=1)
        mbarrier.init(v_ready.index(s), count=1)
        mbarrier.init(k_empty.index(s), count=2)
        mbarrier.init(v_empty.index(s), count=2)
    fence_async_shared()

    qk_scale = scale * LOG2E
    gl.warp_specialize([
        (_producer, (desc_q, desc_k, desc_v, desc_g, q_smem, k_smem, v_smem, g_smem, q_ready, q_empty, k_ready,
                     k_empty, v_ready, v_empty, sched, tiles, k0, k1, TQ, TK, B, HQ, G, BM, BN, D, STAGES, NQ, USE_G,
                     IS_VARLEN, KA)),
        (_consumer, (desc_o, o, q_smem, k_smem, v_smem, g_smem, q_ready, q_empty, k_ready, k_empty, v_ready,
                     v_empty, turn, l_smem, gct, lse, sched, tiles, k0, k1, TQ, TK, TKP, qk_scale, 0, B, HQ, G, BM,
                     BN, D, STAGES, NQ, USE_G, IS_VARLEN, KA, HALF)),
        (_consumer, (desc_o, o, q_smem, k_smem, v_smem, g_smem, q_ready, q_empty, k_ready, k_empty, v_ready,
                     v_empty, turn, l_smem, gct, lse, sched, tiles, k0, k1, TQ, TK, TKP, qk_scale, 1, B, HQ, G, BM,
                     BN, D, STAGES, NQ, USE_G, IS_VARLEN, KA, HALF)),
    ], [4, 4], [240, 240])

    for i in gl.static_range(NQ):
        mbarrier.invalidate(q_ready.index(i))
        mbarrier.invalidate(q_empty.index(i))
    for i in gl.static_range(2):
        mbarrier.invalidate(turn.index(i))
    for s in gl.static_range(STAGES):
        mbarrier.invalidate(k_ready.index(s))
        mbarrier.invalidate(v_ready.index(s))
        mbarrier.invalidate(k_empty.index(s))
        mbarrier.invalidate(v_empty.index(s))
