"""The consumer warpgroups' per-block work in the Gluon (sm_90) forward, ``parallel_fwd_hopper``: the
online softmax of a block of scores, the key gates read from their stage, the ping-pong turns, the
asynchronous QK and PV products and the step that chains them (S(j) issued, PV(j-1) issued, softmax of S(j)
while PV(j-1) runs), the tile's last PV and the output store. The kernel's docstring explains the
schedule."""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)


@gluon.jit
def _softmax(b_s, b_m, b_l, b_gk, b_gq, o_qpos, i_blk, qk_scale, lo, s_layout: gl.constexpr, BN: gl.constexpr,
             NK: gl.constexpr, USE_G: gl.constexpr, MASKED: gl.constexpr, LO: gl.constexpr):
    """Online softmax in base 2 of one block of raw products b_s = q.k: the probabilities (fp32), the new
    running max and sum, and the factor exp2(m_old - m_new) that rescales the accumulator. Gated scores
    are c q.k - gk' before the diagonal (row constant dropped) and c q.k + gq' - gk' on it. LO: keys
    below lo (another sequence's, in a packed batch's first block) are masked too. NK: the block's first
    keys that b_s holds (BN, or BN / 2 for a warpgroup's last block). The row values come in any layout
    equivalent to s_layout's rows (converted where used: no data moves) and the new ones leave in it.

    On the diagonal gq' is added to the row max rather than to every score (one FADD per score fewer). The
    scores c q.k - gk' then carry gk' at the size of the gate sums since the warpgroup's first row, where
    gq' - gk' would have been exact near a row's own key: an extra rounding of at most one ulp of the
    running sums themselves, whose own rounding already bounds the scores (the extreme-gates test)."""
    row: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_in: gl.constexpr = b_m.type.layout
    b_m, b_l = gl.convert_layout(b_m, row), gl.convert_layout(b_l, row)
    o_k = i_blk * BN + gl.arange(0, NK, layout=gl.SliceLayout(0, s_layout))
    if MASKED:
        # causal: a row's position is below TK, so keys past TK are masked with the later ones (rows past
        # TQ, whose outputs are never stored, may read the zero-filled or padded keys and gates)
        m_s = gl.convert_layout(o_qpos, row)[:, None] >= o_k[None, :]
        if LO:
            m_s = m_s & (o_k >= lo)[None, :]
    elif LO:
        m_s = (o_k >= lo)[None, :]
    if USE_G:
        b_x = b_s * qk_scale - b_gk[None, :]
        if MASKED or LO:
            b_x = gl.where(m_s, b_x, float("-inf"))
        if MASKED:
            # the row constant gq' joins the row max, not every score: max(x + gq') = max(x) + gq', and
            # exp2(x + gq' - m) = exp2(x - (m - gq')): one subtraction per score, as off the diagonal
            b_gqr = gl.convert_layout(b_gq, row)
            b_mn = gl.maximum(b_m, gl.max(b_x, 1) + b_gqr)
            b_p = gl.exp2(b_x - (b_mn - b_gqr)[:, None])
        else:
            b_mn = gl.maximum(b_m, gl.max(b_x, 1))
            b_p = gl.exp2(b_x - b_mn[:, None])
    else:
        if MASKED or LO:
            b_s = gl.where(m_s, b_s, float("-inf"))
        b_mn = gl.maximum(b_m, gl.max(b_s, 1) * qk_scale)
        b_p = gl.exp2(b_s * qk_scale - b_mn[:, None])
    b_r = gl.exp2(b_m - b_mn)
    b_l = b_l * b_r + gl.sum(b_p, 1)
    return b_p, gl.convert_layout(b_mn, row_in), gl.convert_layout(b_l, row_in), b_r


@gluon.jit
def _key_gates(g_smem, b_g0, r, s_layout: gl.constexpr, BN: gl.constexpr, NK: gl.constexpr, STAGES: gl.constexpr,
               USE_G: gl.constexpr):
    """[NK] base-2 gate sums of the first NK keys of the block at ring position r relative to g0, read from its stage
    (landed with the keys; columns past the row's end are zero-filled or padding, and masked). Read
    after the QK wait, so that the values do not hold registers while the products run."""
    if USE_G:
        return g_smem.index(r % STAGES).reshape([BN]).slice(0, NK).load(gl.SliceLayout(0, s_layout)) - b_g0
    else:
        return gl.zeros([NK], gl.float32, gl.SliceLayout(0, s_layout))


@gluon.jit
def _turn_wait(turn, n, WG: gl.constexpr):
    """Ping-pong: the two consumers issue their products in strict alternation, so that one's softmax
    runs while the other's products occupy the tensor cores. Issue group n of consumer WG waits for the
    other's group n - 1 + WG (a fresh barrier passes a wait of parity 1: WG 0 starts)."""
    mbarrier.wait(turn.index(WG), (n + 1 - WG) & 1)


@gluon.jit
def _turn_pass(turn, WG: gl.constexpr):
    """The other consumer's turn (after this one's issue group)."""
    mbarrier.arrive(turn.index(1 - WG), count=1)


@gluon.jit
def _issue_qk(q, k_smem, k_ready, r, s_layout: gl.constexpr, BMW: gl.constexpr, BN: gl.constexpr, NK: gl.constexpr,
              D: gl.constexpr, STAGES: gl.constexpr):
    """S = Q K^T for the first NK keys of the block at ring position r, issued (async) once the block has
    landed in its stage."""
    s = r % STAGES
    mbarrier.wait(k_ready.index(s), (r // STAGES) & 1)
    return warpgroup_mma(q, k_smem.index(s).reshape([BN, D]).slice(0, NK).permute((1, 0)),
                         gl.zeros([BMW, NK], gl.float32, s_layout), use_acc=False, is_async=True)


@gluon.jit
def _issue_pv(b_pa, v_smem, v_ready, b_o, b_r, r, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr):
    """O *= b_r (the previous softmax's factor), then O += P V issued (async) once the value block at ring
    position r has landed in its stage (P: [BMW, BN], or [BMW, BN / 2] for the block's first values)."""
    NK: gl.constexpr = b_pa.type.shape[1]
    b_o = b_o * gl.convert_layout(b_r, gl.SliceLayout(1, b_o.type.layout))[:, None]
    s = r % STAGES
    mbarrier.wait(v_ready.index(s), (r // STAGES) & 1)
    return warpgroup_mma(b_pa, v_smem.index(s).reshape([BN, D]).slice(0, NK), b_o, is_async=True)


@gluon.jit
def _last_pv(b_pa, v_smem, v_ready, v_empty, turn, b_o, b_r, r, it, BN: gl.constexpr, D: gl.constexpr,
             STAGES: gl.constexpr, WG: gl.constexpr):
    """The tile's last issue group: PV of its last key block (ring position r), waited for."""
    _turn_wait(turn, r + 1 + it, WG)
    b_o = _issue_pv(b_pa, v_smem, v_ready, b_o, b_r, r, BN, D, STAGES)
    _turn_pass(turn, WG)
    b_o, b_pa = warpgroup_mma_wait(num_outstanding=0, deps=(b_o, b_pa))
    mbarrier.arrive(v_empty.index(r % STAGES), count=1)
    return b_o


@gluon.jit
def _step(q, k_smem, v_smem, g_smem, k_ready, k_empty, v_ready, v_empty, turn, l_smem, b_g0, b_gq, b_o, b_pa, b_m, b_l,
          b_r, o_qpos, c, it, i_blk, qk_scale, s_layout: gl.constexpr, BMW: gl.constexpr, BN: gl.constexpr,
          NK: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr, USE_G: gl.constexpr, MASKED: gl.constexpr,
          WG: gl.constexpr):
    """Key block i_blk (ring position c + i_blk; its first NK keys): S = Q K^T is issued, the accumulator
    rescaled by the previous block's factor b_r, then PV of the previous block issued; the softmax of S runs
    while that PV is on the tensor cores; P and the new factor are kept for the next step (FA3's order).
    The row statistics come and go in the rows' layout of s_layout."""
    r = c + i_blk
    _turn_wait(turn, r + it, WG)
    b_s = _issue_qk(q, k_smem, k_ready, r, s_layout, BMW, BN, NK, D, STAGES)
    b_o = _issue_pv(b_pa, v_smem, v_ready, b_o, b_r, r - 1, BN, D, STAGES)
    _turn_pass(turn, WG)
    b_s = warpgroup_mma_wait(num_outstanding=1, deps=(b_s,))
    b_gk = _key_gates(g_smem, b_g0, r, s_layout, BN, NK, STAGES, USE_G)
    mbarrier.arrive(k_empty.index(r % STAGES), count=1)
    b_p, b_m, b_l, b_r = _softmax(b_s, b_m, b_l, b_gk, b_gq, o_qpos, i_blk, qk_scale, 0, s_layout, BN, NK, USE_G,
                                  MASKED, False)
    b_pn = gl.convert_layout(b_p.to(v_smem.dtype), b_pa.type.layout)
    # ptxas schedules the PV wait right after the QK wait, above the exponentials, wherever it stands in
    # the source (the softmax is register-only); a shared-memory store of the row sums, which needs every
    # exponential and which ptxas keeps ahead of the wait, holds the wait below them. Nothing reads it.
    l_smem.index(WG).store(b_l)
    b_o, b_pa = warpgroup_mma_wait(num_outstanding=0, deps=(b_o, b_pa))
    mbarrier.arrive(v_empty.index((r - 1) % STAGES), count=1)
    return b_o, b_pn, b_m, b_l, b_r


@gluon.jit
def _store_o(desc_o, q, q_buf, b_o, i_b, row, col):
    """The output rows through the warpgroup's query buffer (q, as [BMW, D]; q_buf, as the descriptor's
    block) and a TMA store (clips rows past the batch's end)."""
    q.store(b_o.to(desc_o.dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(desc_o, [i_b, row, col], q_buf)
