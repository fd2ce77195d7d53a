"""Hopper (sm_90) forward of gated causal attention, written in Gluon (Triton's lower-level language:
explicit layouts, shared memory, TMA, mbarriers, asynchronous warpgroup MMAs, warp specialisation).

Same math and outputs as ``parallel_fwd.parallel_attn_fwd_kernel`` (o and the natural-log lse; the
module docstring there explains the two score representations). What Gluon lets this kernel do that
Triton 3.6's compiler does not do for the ``tl`` kernel is FlashAttention-3's schedule:

* warp specialisation: one producer warp issues every TMA load (the two warpgroups' query rows, then
  K and V block by block into STAGES-deep rings, a ready and an empty mbarrier per stage) and gives
  its registers to two consumer warpgroups (setmaxnreg 24 / 240), each owning 64 query rows of the
  program's 128. The consumers never wait for each other, so one's softmax runs while the other's
  products are on the tensor cores.
* within a consumer, the softmax of block j overlaps the PV product of block j - 1:

      S(j) = Q K(j)^T (async);  PV(j-1) += P(j-1) V(j-1) (async);  wait S(j);  release K(j)
      softmax of S(j) -> P(j) (fp32), alpha(j);  wait PV(j-1);  release V(j-1)
      P(j) -> bf16 registers (the PV operand);  O *= alpha(j)

The keys' gate sums are read per block from the per-head base-2 rows (gct, as the tl kernel's unmasked
blocks), and the queries' from the same rows, so that a query and the key at its own position cancel
exactly.

Scope: dense batches (no cu_seqlens), bf16/fp16, head dim 64 or 128 (the dispatch sends 128 here),
Tq <= Tk, on sm_90. The host (``parallel.parallel_attn_fwd``) takes the ``tl`` kernel everywhere else.
There is no CPU interpreter for Gluon: the tests compile it for sm_90 on the CPU and run it on the GPU.
"""

from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from kernels.utils import LN2, LOG2E, is_hopper


@gluon.jit
def _producer(desc_q, desc_k, desc_v, q_smem, k_smem, v_smem, q_bar, k_ready, k_empty, v_ready, v_empty, i_b, i_hq,
              i_h, t0, n_blk, BMW: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr):
    """One warp: TMA of the two warpgroups' query rows, then K and V block by block into STAGES-deep
    rings, each stage refilled once both consumers released it (its empty barrier counts two arrivals;
    a fresh barrier passes the first wait of parity 1)."""
    mbarrier.expect(q_bar, 2 * desc_q.block_type.nbytes)
    tma.async_copy_global_to_shared(desc_q, [i_b, t0, i_hq * D], q_bar, q_smem.index(0))
    tma.async_copy_global_to_shared(desc_q, [i_b, t0 + BMW, i_hq * D], q_bar, q_smem.index(1))
    for i_blk in range(n_blk):
        s = i_blk % STAGES
        ph = ((i_blk // STAGES) & 1) ^ 1
        mbarrier.wait(k_empty.index(s), ph)
        mbarrier.expect(k_ready.index(s), desc_k.block_type.nbytes)
        tma.async_copy_global_to_shared(desc_k, [i_b, i_blk * BN, i_h * D], k_ready.index(s), k_smem.index(s))
        mbarrier.wait(v_empty.index(s), ph)
        mbarrier.expect(v_ready.index(s), desc_v.block_type.nbytes)
        tma.async_copy_global_to_shared(desc_v, [i_b, i_blk * BN, i_h * D], v_ready.index(s), v_smem.index(s))


@gluon.jit
def _softmax(b_s, b_m, b_l, b_gk, b_gq, o_qpos, i_blk, TK, qk_scale, s_layout: gl.constexpr, BN: gl.constexpr,
             USE_G: gl.constexpr, MASKED: gl.constexpr):
    """Online softmax in base 2 of one block of raw products b_s = q.k: the probabilities (fp32), the new
    running max and sum, and the factor exp2(m_old - m_new) that rescales the accumulator. Gated scores
    are c q.k - gk' before the diagonal (row constant dropped) and c q.k + gq' - gk' on it."""
    if MASKED:
        o_k = i_blk * BN + gl.arange(0, BN, layout=gl.SliceLayout(0, s_layout))
        m_s = (o_qpos[:, None] >= o_k[None, :]) & (o_k < TK)[None, :]
    if USE_G:
        if MASKED:
            b_x = gl.where(m_s, b_s * qk_scale + (b_gq[:, None] - b_gk[None, :]), float("-inf"))
        else:
            b_x = b_s * qk_scale - b_gk[None, :]
        b_mn = gl.maximum(b_m, gl.max(b_x, 1))
        b_p = gl.exp2(b_x - b_mn[:, None])
    else:
        if MASKED:
            b_s = gl.where(m_s, b_s, float("-inf"))
        b_mn = gl.maximum(b_m, gl.max(b_s, 1) * qk_scale)
        b_p = gl.exp2(b_s * qk_scale - b_mn[:, None])
    b_r = gl.exp2(b_m - b_mn)
    b_l = b_l * b_r + gl.sum(b_p, 1)
    return b_p, b_mn, b_l, b_r


@gluon.jit
def _key_gates(gct, g_col0, b_g0, i_blk, s_layout: gl.constexpr, BN: gl.constexpr, USE_G: gl.constexpr):
    """[BN] base-2 gate sums of key block i_blk relative to g0 (columns past TK read the row's padding or
    the next row: only masked blocks reach them, and there they are masked)."""
    if USE_G:
        o_k = i_blk * BN + gl.arange(0, BN, layout=gl.SliceLayout(0, s_layout))
        return gl.load(gct + g_col0 + o_k) - b_g0
    else:
        return gl.zeros([BN], gl.float32, gl.SliceLayout(0, s_layout))


@gluon.jit
def _issue_qk(q, k_smem, k_ready, i_blk, s_layout: gl.constexpr, BMW: gl.constexpr, BN: gl.constexpr,
              D: gl.constexpr, STAGES: gl.constexpr):
    """S = Q K(i_blk)^T, issued (async) once the key block has landed in its stage."""
    s = i_blk % STAGES
    mbarrier.wait(k_ready.index(s), (i_blk // STAGES) & 1)
    return warpgroup_mma(q, k_smem.index(s).reshape([BN, D]).permute((1, 0)),
                         gl.zeros([BMW, BN], gl.float32, s_layout), use_acc=False, is_async=True)


@gluon.jit
def _issue_pv(b_pa, v_smem, v_ready, b_o, i_blk, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr):
    """O += P V(i_blk), issued (async) once the value block has landed in its stage."""
    s = i_blk % STAGES
    mbarrier.wait(v_ready.index(s), (i_blk // STAGES) & 1)
    return warpgroup_mma(b_pa, v_smem.index(s).reshape([BN, D]), b_o, is_async=True)


@gluon.jit
def _step(q, k_smem, v_smem, k_ready, k_empty, v_ready, v_empty, gct, g_col0, b_g0, b_gq, b_o, b_pa, b_m, b_l,
          o_qpos, i_blk, TK, qk_scale, s_layout: gl.constexpr, o_layout: gl.constexpr, BMW: gl.constexpr,
          BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr, USE_G: gl.constexpr, MASKED: gl.constexpr):
    """Key block i_blk: S = Q K^T is issued, then PV of the previous block; the softmax of S runs while
    that PV is on the tensor cores; then the accumulator is rescaled and P kept for the next step."""
    s = i_blk % STAGES
    sp = (i_blk - 1) % STAGES
    b_gk = _key_gates(gct, g_col0, b_g0, i_blk, s_layout, BN, USE_G)
    b_s = _issue_qk(q, k_smem, k_ready, i_blk, s_layout, BMW, BN, D, STAGES)
    b_o = _issue_pv(b_pa, v_smem, v_ready, b_o, i_blk - 1, BN, D, STAGES)
    b_s = warpgroup_mma_wait(num_outstanding=1, deps=(b_s,))
    mbarrier.arrive(k_empty.index(s), count=1)
    b_p, b_m, b_l, b_r = _softmax(b_s, b_m, b_l, b_gk, b_gq, o_qpos, i_blk, TK, qk_scale, s_layout, BN, USE_G,
                                  MASKED)
    # P of the previous block is an operand of the PV in flight: its registers stay live until the wait
    b_o, b_pa = warpgroup_mma_wait(num_outstanding=0, deps=(b_o, b_pa))
    mbarrier.arrive(v_empty.index(sp), count=1)
    b_pa = gl.convert_layout(b_p.to(v_smem.dtype), b_pa.type.layout)
    b_o = b_o * gl.convert_layout(b_r, gl.SliceLayout(1, o_layout))[:, None]
    return b_o, b_pa, b_m, b_l


@gluon.jit
def _consumer(desc_o, q_smem, k_smem, v_smem, q_bar, k_ready, k_empty, v_ready, v_empty, gct, lse, i_b, i_hq, t0,
              n_blk, offset, TQ, TK, g_col0, qk_scale, WG: gl.constexpr, HQ: gl.constexpr, BMW: gl.constexpr,
              BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr, USE_G: gl.constexpr):
    """One warpgroup: query rows [t0 + WG * BMW, + BMW) of the tile against every key block of the tile."""
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BN, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, D, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    r0 = t0 + WG * BMW
    o_t = r0 + gl.arange(0, BMW, layout=row_s)
    o_qpos = offset + o_t  # absolute positions of the rows
    b_gq = gl.zeros([BMW], gl.float32, row_s)
    b_g0 = 0.0
    if USE_G:
        # base-2 gate sums of the rows relative to the first row's (g0), from the same rows as the keys'
        # (so that a query and the key at its own position cancel exactly)
        b_g0 = gl.load(gct + g_col0 + offset + r0)
        b_gq = gl.load(gct + g_col0 + o_qpos, mask=o_t < TQ, other=0.0) - b_g0
    # blocks [0, n_off) precede every row of this warpgroup: no mask, scores without the row constant
    n_off = (offset + r0) // BN

    mbarrier.wait(q_bar, 0)
    q = q_smem.index(WG).reshape([BMW, D])
    b_m = gl.full([BMW], float("-inf"), gl.float32, row_s)
    b_l = gl.zeros([BMW], gl.float32, row_s)

    # block 0 (nothing to overlap with yet)
    b_gk = _key_gates(gct, g_col0, b_g0, 0, s_layout, BN, USE_G)
    b_s = _issue_qk(q, k_smem, k_ready, 0, s_layout, BMW, BN, D, STAGES)
    b_s = warpgroup_mma_wait(num_outstanding=0, deps=(b_s,))
    mbarrier.arrive(k_empty.index(0), count=1)
    if n_off > 0:
        b_p, b_m, b_l, b_r = _softmax(b_s, b_m, b_l, b_gk, b_gq, o_qpos, 0, TK, qk_scale, s_layout, BN, USE_G, False)
    else:
        b_m += b_gq  # stays -inf: the per-row representation from the start
        b_p, b_m, b_l, b_r = _softmax(b_s, b_m, b_l, b_gk, b_gq, o_qpos, 0, TK, qk_scale, s_layout, BN, USE_G, True)
    b_pa = gl.convert_layout(b_p.to(v_smem.dtype), p_layout)
    b_o = gl.zeros([BMW, D], gl.float32, o_layout)

    for i_blk in range(1, n_off):
        b_o, b_pa, b_m, b_l = _step(q, k_smem, v_smem, k_ready, k_empty, v_ready, v_empty, gct, g_col0, b_g0, b_gq,
                                    b_o, b_pa, b_m, b_l, o_qpos, i_blk, TK, qk_scale, s_layout, o_layout, BMW, BN, D,
                                    STAGES, USE_G, False)
    if n_off > 0:
        b_m += b_gq  # back to the per-row representation: m = m' + (gq_i - g0)
    for i_blk in range(gl.maximum(n_off, 1), n_blk):
        b_o, b_pa, b_m, b_l = _step(q, k_smem, v_smem, k_ready, k_empty, v_ready, v_empty, gct, g_col0, b_g0, b_gq,
                                    b_o, b_pa, b_m, b_l, o_qpos, i_blk, TK, qk_scale, s_layout, o_layout, BMW, BN, D,
                                    STAGES, USE_G, True)
    # PV of the last block
    b_o = _issue_pv(b_pa, v_smem, v_ready, b_o, n_blk - 1, BN, D, STAGES)
    b_o, b_pa = warpgroup_mma_wait(num_outstanding=0, deps=(b_o, b_pa))
    mbarrier.arrive(v_empty.index((n_blk - 1) % STAGES), count=1)

    # epilogue: o = acc / l through this warpgroup's query buffer and a TMA store (clips rows past TQ);
    # natural-log lse = (m2 + log2 l) ln 2 with m2 the true base-2 row max
    b_o = b_o / gl.convert_layout(b_l, gl.SliceLayout(1, o_layout))[:, None]
    q.store(b_o.to(desc_o.dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(desc_o, [i_b, r0, i_hq * D], q_smem.index(WG))
    b_lse = (b_m + gl.log2(b_l)) * LN2
    gl.store(lse + ((i_b * TQ + o_t).to(gl.int64) * HQ + i_hq), b_lse, mask=o_t < TQ)
    tma.store_wait(pendings=0)


@gluon.jit
def parallel_attn_fwd_hopper_kernel(desc_q, desc_k, desc_v, desc_o, gct, lse, scale, TQ, TK, TKP,
                                    B: gl.constexpr, H: gl.constexpr, HQ: gl.constexpr, G: gl.constexpr,
                                    D: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, STAGES: gl.constexpr,
                                    USE_G: gl.constexpr):
    # axis 0 enumerates (query tile, batch x query head), the tiles with the most keys first
    i_p = gl.program_id(0)
    NT = gl.cdiv(TQ, BM)
    i_bh = i_p % (B * HQ)
    i_t = NT - 1 - i_p // (B * HQ)
    i_b, i_hq = i_bh // HQ, i_bh % HQ
    i_h = i_hq // G
    t0 = i_t * BM
    offset = TK - TQ  # query row r sits at absolute key position offset + r
    n_blk = gl.cdiv(gl.minimum(offset + t0 + BM, TK), BN)  # key blocks the tile sees
    g_col0 = (i_b * HQ + i_hq).to(gl.int64) * TKP  # this (batch, head)'s row of the base-2 gate sums
    BMW: gl.constexpr = BM // 2

    q_smem = gl.allocate_shared_memory(desc_q.dtype, [2] + desc_q.block_type.shape, desc_q.layout)
    k_smem = gl.allocate_shared_memory(desc_k.dtype, [STAGES] + desc_k.block_type.shape, desc_k.layout)
    v_smem = gl.allocate_shared_memory(desc_v.dtype, [STAGES] + desc_v.block_type.shape, desc_v.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for s in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(s), count=1)
        mbarrier.init(v_ready.index(s), count=1)
        mbarrier.init(k_empty.index(s), count=2)  # one arrival per consumer warpgroup
        mbarrier.init(v_empty.index(s), count=2)
    fence_async_shared()

    qk_scale = scale * LOG2E
    gl.warp_specialize([
        (_consumer, (desc_o, q_smem, k_smem, v_smem, q_bar, k_ready, k_empty, v_ready, v_empty, gct, lse, i_b, i_hq,
                     t0, n_blk, offset, TQ, TK, g_col0, qk_scale, 0, HQ, BMW, BN, D, STAGES, USE_G)),
        (_consumer, (desc_o, q_smem, k_smem, v_smem, q_bar, k_ready, k_empty, v_ready, v_empty, gct, lse, i_b, i_hq,
                     t0, n_blk, offset, TQ, TK, g_col0, qk_scale, 1, HQ, BMW, BN, D, STAGES, USE_G)),
        (_producer, (desc_q, desc_k, desc_v, q_smem, k_smem, v_smem, q_bar, k_ready, k_empty, v_ready, v_empty, i_b,
                     i_hq, i_h, t0, n_blk, BMW, BN, D, STAGES)),
    ], [4, 1], [240, 24])

    mbarrier.invalidate(q_bar)
    for s in gl.static_range(STAGES):
        mbarrier.invalidate(k_ready.index(s))
        mbarrier.invalidate(v_ready.index(s))
        mbarrier.invalidate(k_empty.index(s))
        mbarrier.invalidate(v_empty.index(s))


# ----------------------------------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------------------------------

# head dim -> (BM, BN, STAGES): BM query rows per program (two consumer warpgroups of BM / 2), BN keys
# per block, STAGES-deep K and V rings. H100, 2026-11-24: at D=128 three stages were 2-5% faster from
# T=4k on and 5% slower at T=1k (short key loops: fewer programs fit), so short ones keep two.
# D=64 stays on the tl kernel: there the softmax (one exp2 per score) outweighs the halved products, and
# this kernel measured 10-25% slower gated (H100, 2026-11-24, docs/notes-prefill.md, session 8); the
# compile tests and direct calls still cover it.
_BLOCKS = {64: (128, 128, 3), 128: (128, 128, 3)}
_DISPATCH_D = (128,)
_SHORT_TK = 2048


def _blocks(D: int, TK: int) -> tuple[int, int, int]:
    BM, BN, STAGES = _BLOCKS[D]
    return (BM, BN, 2) if TK < _SHORT_TK else (BM, BN, STAGES)


def supported(q: torch.Tensor, k: torch.Tensor, cu_seqlens, v: torch.Tensor | None = None) -> bool:
    """Whether the dispatch sends the call here: dense batch, 16-bit, head dim 128, on sm_90, with
    TMA-able tensors (contiguous, 16-byte aligned) and int32 coordinates."""
    B, TQ, HQ, D = q.shape
    TK = k.shape[1]
    tensors = (q, k) if v is None else (q, k, v)
    return (
        cu_seqlens is None and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) and D in _DISPATCH_D
        and all(t.is_contiguous() and t.data_ptr() % 16 == 0 for t in tensors)
        and is_hopper(q.device) and 0 < TQ <= TK
        and B * HQ * (TK + 16) < 2**31
    )


def _desc(x: torch.Tensor, block: list[int]):
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    layout = gl.NVMMASharedLayout.get_default_for(block, _GL_DTYPE[x.dtype])
    return TensorDescriptor.from_tensor(x, block, layout)


_GL_DTYPE = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}


def compile_sm90(D: int, gated: bool):
    """The kernel compiled for sm_90 without a GPU (``triton.compile`` of the Gluon source for a CUDA 9.0
    target; small batch and head counts, the default blocks of head dim D): its ``asm`` (ttgir, ptx) and
    ``metadata`` for resource checks on any machine. Needs TRITON_INTERPRET unset."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    fn = parallel_attn_fwd_hopper_kernel
    BM, BN, STAGES = _BLOCKS[D]

    def desc(block):
        layout = gl.NVMMASharedLayout.get_default_for(block, gl.bfloat16)
        return f"tensordesc<bf16[{','.join(map(str, block))}],{layout!r}>"

    consts = dict(B=2, H=2, HQ=4, G=2, D=D, BM=BM, BN=BN, STAGES=STAGES, USE_G=gated)
    types = dict(desc_q=desc([1, BM // 2, D]), desc_o=desc([1, BM // 2, D]), desc_k=desc([1, BN, D]),
                 desc_v=desc([1, BN, D]), gct="*fp32" if gated else None, lse="*fp32", scale="fp32", TQ="i32",
                 TK="i32", TKP="i32")
    sig, const = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts or types[name] is None:
            sig[name] = "constexpr"
            const[(i,)] = consts.get(name)
        else:
            sig[name] = types[name]
    src = GluonASTSource(fn, sig, const, {})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4))


def parallel_attn_fwd_hopper(q, k, v, gct, scale: float, o: torch.Tensor, lse: torch.Tensor,
                             blocks: tuple[int, int, int] | None = None) -> None:
    """Write o [B, TQ, HQ, D] and lse [B, TQ, HQ] (natural log) for q, k, v (contiguous) and the base-2
    running gate sums as per-head rows gct [B * HQ, TKP] fp32 (None when ungated)."""
    B, TQ, HQ, D = q.shape
    TK, H = k.shape[1], k.shape[2]
    BM, BN, STAGES = blocks or _blocks(D, TK)
    # [B, T, NH * D] views: a [1, rows, D] block of one head; TMA zero-fills rows past T of its batch
    desc_q = _desc(q.view(B, TQ, HQ * D), [1, BM // 2, D])
    desc_o = _desc(o.view(B, TQ, HQ * D), [1, BM // 2, D])
    desc_k = _desc(k.view(B, TK, H * D), [1, BN, D])
    desc_v = _desc(v.view(B, TK, H * D), [1, BN, D])
    TKP = gct.shape[1] if gct is not None else 0
    grid = (triton.cdiv(TQ, BM) * B * HQ,)
    # 4 warps here (the first consumer); the second consumer (4) and the producer (1) are partitions
    parallel_attn_fwd_hopper_kernel[grid](desc_q, desc_k, desc_v, desc_o, gct, lse, scale, TQ, TK, TKP,
                                          B=B, H=H, HQ=HQ, G=HQ // H, D=D, BM=BM, BN=BN, STAGES=STAGES,
                                          USE_G=gct is not None, num_warps=4)
