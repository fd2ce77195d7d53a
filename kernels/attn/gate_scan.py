"""Triton running sums of the log forget gates along time (same semantics and signature as
``naive.gate_scan``): the gate sums gc that the parallel forward needs, plus its per-head base-2 rows,
and in the backward the reverse sums that turn d(gc) into d(g).

Why a kernel: in torch this was five to seven launches (fp64 cast, transposed copies, scan, casts, the
rows' multiply): 37 us of the 339 us gated forward at B = 16, T = 1k, 16x128 on the H100 (11%), and as
much again in the backward (2026-11-24, torch profiler).

``gate_scan_kernel``, grid (chunks, head blocks): a program owns BT tokens of one sequence for BH query
heads. It first sums, in fp64, all the gates of its sequence before the chunk (after it, reversed),
reading them in [BP, BH] tiles: O(L^2 / BT) reads per sequence of length L, all from L2 after the first
touch and small next to attention's O(L^2 D) work. Then it scans its own chunk in fp64 (``tl.cumsum``)
on top of that sum and stores the fp32 result and, if asked, that fp32 result times log2(e) (in fp32)
transposed into the [B * HQ, TKP] rows. The sums are tree sums per tile, not the reference's sequential order, so results
agree with it to fp64 rounding before the final fp32 cast (tests: relative 1e-6 of the sums' scale).
Packed batches take (sequence, chunk) pairs from ``prepare_chunk_indices``, as the attention kernels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.attn.chunks import prepare_chunk_indices
from kernels.launch import LaunchCache
from kernels.utils import LOG2E, cdiv, next_power_of_2

BT = 256  # tokens a program scans
BP = 512  # tokens per tile of the sum before (after) the chunk
NUM_WARPS = 8


@triton.jit
def gate_scan_kernel(
    g, out, rows, cu_seqlens, chunk_indices, T, NT, TKP,
    HQ: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr, BH: tl.constexpr,
    REVERSE: tl.constexpr, WRITE_ROWS: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    i_c, i_hb = tl.program_id(0), tl.program_id(1)
    if IS_VARLEN:  # packed (B = 1): chunk i_t of sequence i_n
        i_n = tl.load(chunk_indices + i_c * 2).to(tl.int64)
        i_t = tl.load(chunk_indices + i_c * 2 + 1).to(tl.int64)
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        i_b = i_n * 0  # rows: one per head, columns = packed positions
    else:
        i_b = (i_c // NT).to(tl.int64)
        i_t = (i_c % NT).to(tl.int64)
        bos = i_b * T
        eos = bos + T
    o_h = i_hb * BH + tl.arange(0, BH)
    m_h = o_h < HQ
    t0 = bos + i_t * BT  # flattened token index of the chunk's first token
    t1 = tl.minimum(t0 + BT, eos)

    # fp64 sum of the sequence's gates before the chunk (after it when reversed)
    if REVERSE:
        lo, hi = t1, eos
    else:
        lo, hi = bos, t0
    b_base = tl.zeros([BH], dtype=tl.float64)
    i_p = lo
    while i_p < hi:  # (a while loop: the CPU interpreter cannot take a loaded value as a range() bound)
        o_p = i_p + tl.arange(0, BP)
        m_ph = (o_p < hi)[:, None] & m_h[None, :]
        b_g = tl.load(g + o_p[:, None] * HQ + o_h[None, :], mask=m_ph, other=0.0)
        b_base += tl.sum(b_g.to(tl.float64), 0)
        i_p += BP

    o_t = t0 + tl.arange(0, BT)
    m_th = (o_t < t1)[:, None] & m_h[None, :]
    b_g = tl.load(g + o_t[:, None] * HQ + o_h[None, :], mask=m_th, other=0.0).to(tl.float64)
    b_s = tl.cumsum(b_g, 0, reverse=REVERSE) + b_base[None, :]  # [BT, BH]
    b_o = b_s.to(tl.float32)
    tl.store(out + o_t[:, None] * HQ + o_h[None, :], b_o, mask=m_th)
    if WRITE_ROWS:
        # row (b, head), column = position within the row's [T] axis (packed position when varlen).
        # From the stored fp32 sums, in fp32: the forward kernel scales gc by log2(e) the same way, so
        # a position's row value and its in-kernel value agree to the bit
        p_r = rows + (i_b * HQ + o_h)[None, :] * TKP + (o_t - i_b * T)[:, None]
        tl.store(p_r, b_o * LOG2E, mask=m_th)


_LAUNCH = LaunchCache(gate_scan_kernel)  # an eager forward's first launch: Triton's dispatch skipped on repeats


def gate_scan(
    g: torch.Tensor, cu_seqlens: torch.Tensor | None = None, reverse: bool = False, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """See ``naive.gate_scan``: fp32 [B, T, HQ] running sums of g within each sequence (reverse: from
    the end), and optionally their base-2 rows into ``rows`` [B * HQ, TKP]. One launch."""
    B, T, HQ = g.shape
    if g.dtype != torch.float32 or not g.is_contiguous():
        g = g.float().contiguous()
    out = torch.empty(B, T, HQ, dtype=torch.float32, device=g.device)
    if rows is not None and (rows.dtype != torch.float32 or rows.dim() != 2 or rows.shape[0] != B * HQ
                             or rows.shape[1] < T or not rows.is_contiguous()):
        raise ValueError(f"rows must be contiguous fp32 [B * HQ, >= T] = [{B * HQ}, >= {T}]")
    if T == 0 or B == 0:
        return out
    if cu_seqlens is not None and B != 1:
        raise ValueError("cu_seqlens needs B == 1")
    BH = min(16, next_power_of_2(HQ))
    TKP = rows.shape[1] if rows is not None else 0
    meta = dict(HQ=HQ, BT=BT, BP=BP, BH=BH, REVERSE=reverse, WRITE_ROWS=rows is not None,
                IS_VARLEN=cu_seqlens is not None, num_warps=NUM_WARPS)
    if cu_seqlens is None:
        NT = cdiv(T, BT)
        grid = (B * NT, cdiv(HQ, BH))
        args = (g, out, rows if rows is not None else out, None, None, T, NT, TKP)
        if not g.is_cuda:  # the interpreter (or Triton's own error for a CPU tensor)
            _LAUNCH(grid, *args, **meta)
            return out
        # an eager forward's first launch: a prepared launch, keyed on what its arguments are made of
        key = (torch.cuda.current_device(), g.get_device(), B, T, HQ, g.data_ptr(), out.data_ptr(),
               rows.data_ptr() if rows is not None else None, TKP, reverse, BT, BP, NUM_WARPS)
        _LAUNCH.launch_prepared(key, lambda: (grid, args, meta, None))
        return out
    chunks = prepare_chunk_indices(cu_seqlens, BT)
    if chunks.shape[0] > 0:
        _LAUNCH((chunks.shape[0], cdiv(HQ, BH)), g, out, rows if rows is not None else out, cu_seqlens, chunks, T, 0,
                TKP, **meta)
    return out
