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
  Stores o and lse (natural log) per row. ``parallel_fwd``'s docstring has the details: scores
  without the row constant before the diagonal, TMA loads of K/V, per-head gate rows.
* ``parallel_attn_bwd_kernel_preprocess``: delta_i = sum_d o_id * do_id (fp32) and lse in base 2, as
  per-head rows [B * HQ, T] (contiguous along time, like the base-2 gate sums the host copies), so that
  the inner loops of the two kernels below read them as contiguous vectors.
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
* ``parallel_common`` holds what the kernels share: the tile a program owns, pointers, the paired
  k/v and q/do tile loads (pointers or TMA descriptors) and the per-head rows.

Grids put every program on axis 0 (no 65535 limit on axes 1/2); scalar base offsets are int64 so
that T * H * D beyond 2^31 cannot overflow.
"""

from __future__ import annotations

import os

import torch
import triton
from triton.tools.tensor_descriptor import TensorDescriptor

from kernels.attn.chunks import prepare_chunk_indices
from kernels.attn.gate_scan import gate_scan
from kernels.attn.naive import _check_shapes
from kernels.attn.parallel_bwd import (
    parallel_attn_bwd_kernel_dkdv,
    parallel_attn_bwd_kernel_dq,
    parallel_attn_bwd_kernel_preprocess,
)
from kernels.attn import parallel_hopper
from kernels.attn.parallel_fwd import parallel_attn_fwd_kernel
from kernels.attn.parallel_tuning import _AUTOTUNE, _blocks, _dkdv_tuned, _dq_tuned, _fwd_tuned
from kernels.launch import LaunchCache, descriptor
from kernels.utils import LOG2E, fix_triton_interpreter_index, next_power_of_2, sm_major

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if _INTERPRET:
    fix_triton_interpreter_index()

# the kernels' launches skip Triton's dispatch on repeated keys (kernels/launch.py): an eager backward at
# T=1k spent most of its host time there (H100 machine, 2026-11-24: ~1 ms of host time per gated f+b call)
_FWD = LaunchCache(parallel_attn_fwd_kernel)
_PREPROCESS = LaunchCache(parallel_attn_bwd_kernel_preprocess)
_DKDV = LaunchCache(parallel_attn_bwd_kernel_dkdv)
_DQ = LaunchCache(parallel_attn_bwd_kernel_dq)


# ----------------------------------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------------------------------


def _dot_prec(dtype: torch.dtype) -> str:
    # fp32 inputs get exact fp32 products (tf32 would cost ~3e-4 relative error)
    if _INTERPRET and dtype == torch.bfloat16:
        return "upcast"
    return "ieee" if dtype == torch.float32 else "tf32"


# TMA descriptors for the loop-loaded tiles: K/V in the forward and dq, Q/dO in dk/dv (GATEDGEN_NO_TMA=1:
# pointer loads everywhere)
_TMA = os.environ.get("GATEDGEN_NO_TMA") != "1"


def _tile_descriptors(x, y, rows: int, BK: int):
    """TMA tensor descriptors of x and y [B, T, NH, D] (contiguous) viewed as [B * T, NH * D] with
    [rows, BK] blocks, or (None, None) where TMA does not apply: head dims that are not a power of two (a
    padded block would read the next head), dtypes other than bf16/fp16, bases not 16-byte aligned, 2^31
    rows or more (TMA coordinates are int32), GPUs before Hopper. Built without re-checks
    (``launch.descriptor``): what the dataclass checks holds here."""
    B, T, NH, K = x.shape
    usable = (
        _TMA and K == BK and x.dtype in (torch.bfloat16, torch.float16) and 0 < B * T < 2**31
        and x.data_ptr() % 16 == 0 and y.data_ptr() % 16 == 0
        and (_INTERPRET or (x.is_cuda and sm_major(x.device) >= 9))
    )
    if not usable:
        return None, None
    shape = [B * T, NH * K]
    return descriptor(TensorDescriptor, x, shape, [rows, BK]), descriptor(TensorDescriptor, y, shape, [rows, BK])


# where the forward's unmasked blocks read the keys' gate sums: 1 = a per-head copy [B * HQ, Tk]
# (contiguous), 0 = the [B, T, HQ] running sums (stride HQ). H100, 2026-11-24: 1 was 3-5% faster at D=128
# (a TMA descriptor of the copy and loading a block ahead by hand were slower; docs/notes-prefill.md)
_GATE_T = int(os.environ.get("GATEDGEN_FWD_GATE_T", "1"))


def _pad16(n: int) -> int:
    return -(-n // 16) * 16


def _rows_buffer(B: int, TK: int, HQ: int, device) -> tuple[torch.Tensor, int]:
    """An fp32 [B * HQ, TKP] buffer for the base-2 gate rows, TKP = Tk rounded up to 16 (64-byte rows,
    so that Triton knows the rows' alignment); the padding columns are never read (keys < Tk only;
    the tests NaN-fill torch.empty)."""
    TKP = _pad16(TK)
    return torch.empty(B * HQ, TKP, dtype=torch.float32, device=device), TKP


def _gate_rows(gc, mode: int = 1, gct=None):
    """(gct, TKP, mode): the running sums in base 2 (times log2 e) as one row per (batch, head),
    [B * HQ, TKP] fp32: ``gct`` when the caller has them (raw gates get their rows from the scan
    kernel, in the same launch as the sums: ``_gate_sums``), else built from gc. Mode 0 or no gates:
    (None, 0, 0)."""
    if gc is None or mode == 0:
        return None, 0, 0
    if gct is not None:
        return gct, gct.shape[1], mode
    B, TK, HQ = gc.shape
    gct, TKP = _rows_buffer(B, TK, HQ, gc.device)
    torch.mul(gc.transpose(1, 2), LOG2E.value, out=gct.view(B, HQ, TKP)[..., :TK])
    return gct, TKP, mode


# the Gluon forward (FlashAttention-3's warp-specialised, ping-pong schedule; parallel_fwd_hopper) takes
# the 16-bit dense and packed batches it supports on sm_90 (parallel_hopper.supported); GATEDGEN_FWD_HOPPER=0:
# the tl kernel everywhere
_HOPPER = os.environ.get("GATEDGEN_FWD_HOPPER") != "0"

# the tl forward's programs take GROUP (batch x head)s at a time (parallel_common.program_tile), so that
# programs running together share those heads' keys in L2; 0: the batch x head index fastest
_TILE_GROUP = int(os.environ.get("GATEDGEN_TILE_GROUP", "8"))

# gated 16-bit forwards of dense batches with at least this many keys take the "fwd_long" blocks
_LONG_TK = 8192


def _fwd_kind(gated: bool, element_size: int, TK: int, varlen: bool) -> str:
    """Which block table of parallel_tuning the forward uses. Ungated 16-bit inputs have their own
    (larger) blocks; fp32 tiles of that size would not fit in shared memory (D=128: 3 stages of
    128x128 fp32 K and V = 384 KB), so fp32 keeps the gated ones. Gated 16-bit dense batches switch
    to larger blocks at long sequences (packed batches: the lengths are not known on the host)."""
    if element_size != 2:
        return "fwd"
    if not gated:
        return "fwd_ungated"
    return "fwd_long" if TK >= _LONG_TK and not varlen else "fwd"


def parallel_attn_fwd(q, k, v, gc, scale: float, cu_seqlens, gct=None):
    """o [B, TQ, HQ, D] (q's dtype) and lse [B, TQ, HQ] fp32 natural log. ``gct``: the base-2 gate rows
    of gc when the caller has them (``_gate_sums``), else built here."""
    B, TQ, HQ, K = q.shape
    o = torch.empty_like(q)
    lse = torch.empty(B, TQ, HQ, dtype=torch.float32, device=q.device)
    if TQ == 0:
        return o, lse
    if (_HOPPER and not _INTERPRET and not (_AUTOTUNE and cu_seqlens is None)
            and parallel_hopper.supported(q, k, cu_seqlens, v)):
        # first: the eager prefill path, where host time per call counts (GATEDGEN_AUTOTUNE=1: dense
        # batches take the autotuned tl kernel below)
        parallel_hopper.parallel_attn_fwd_hopper(q, k, v, _gate_rows(gc, 1, gct)[0], scale, o, lse,
                                                 cu_seqlens=cu_seqlens)
        return o, lse
    TK, H = k.shape[1], k.shape[2]
    BK = max(next_power_of_2(K), 16)
    common = dict(B=B, H=H, HQ=HQ, G=HQ // H, K=K, BK=BK, USE_G=gc is not None, DOT_PREC=_dot_prec(q.dtype),
                  GROUP=_TILE_GROUP)
    if cu_seqlens is None and _AUTOTUNE:
        def grid(meta):
            return (triton.cdiv(TQ, meta["BT"]) * B * HQ,)

        _fwd_tuned[grid](q, k, v, o, gc, lse, None, None, None, None, None, scale, TQ, TK, 0, 0,
                         IS_VARLEN=False, USE_TMA=False, GATE_T=0, **common)
        return o, lse
    cfg = _blocks(_fwd_kind(gc is not None, q.element_size(), TK, cu_seqlens is not None), BK)
    desc_k, desc_v = _tile_descriptors(k, v, cfg["BS"], BK)
    common["USE_TMA"] = desc_k is not None
    gct, TKP, common["GATE_T"] = _gate_rows(gc, _GATE_T, gct)
    if cu_seqlens is None:
        chunks, NT = None, triton.cdiv(TQ, cfg["BT"])
        grid = (NT * B * HQ,)
    else:
        chunks = prepare_chunk_indices(cu_seqlens, cfg["BT"])
        NT = chunks.shape[0]
        grid = (NT * HQ,)
    if NT > 0:
        _FWD(
            grid, q, k, v, o, gc, lse, cu_seqlens, chunks, desc_k, desc_v, gct, scale, TQ, TK, NT, TKP,
            IS_VARLEN=cu_seqlens is not None, **common, **cfg
        )
    return o, lse


def parallel_attn_bwd(q, k, v, o, gc, lse, do, scale: float, cu_seqlens, gct=None):
    """dq, dk, dv in the inputs' dtypes and dgc [B, TK, HQ] fp32 (None when ungated). ``gct``: the
    forward's base-2 gate rows when it kept them, else rebuilt here."""
    B, TQ, HQ, K = q.shape
    TK, H = k.shape[1], k.shape[2]
    G = HQ // H
    BK = max(next_power_of_2(K), 16)
    common = dict(B=B, H=H, HQ=HQ, G=G, K=K, BK=BK, USE_G=gc is not None, DOT_PREC=_dot_prec(q.dtype))

    # per-head rows [B * HQ, TQP] of delta_i = o_i . do_i and the base-2 lse, and [B * HQ, TKP] of the
    # base-2 gate sums: what the inner loops read per block, contiguous along time
    TQP = _pad16(TQ)
    deltat = torch.empty(B * HQ, TQP, dtype=torch.float32, device=q.device)
    lset = torch.empty(B * HQ, TQP, dtype=torch.float32, device=q.device)
    BR = 16 if _INTERPRET else 64
    if TQ > 0:
        _PREPROCESS(
            (triton.cdiv(TQ, BR) * B * HQ,), o, do, lse, deltat, lset, TQ, TQP, B * HQ, HQ=HQ, K=K, BR=BR, BK=BK)
    gct, TKP, _ = _gate_rows(gc, 1, gct)

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
    rows = (lset, deltat, gct)
    if cu_seqlens is None and _AUTOTUNE:
        def grid_kv(meta):
            return (triton.cdiv(TK, meta["BS"]) * B * H,)

        def grid_q(meta):
            return (triton.cdiv(TQ, meta["BT"]) * B * HQ,)

        _dkdv_tuned[grid_kv](q, k, v, *rows, do, dk, dv, dgc_k, None, None, None, None, scale, TQ, TK, TQP, TKP,
                             IS_VARLEN=False, USE_TMA=False, **common)
        if dgc_k is not None and dgc is None:
            dgc = dgc_k.clone()  # the dq kernel writes over the query positions
        _dq_tuned[grid_q](q, k, v, *rows, do, dq, dgc_k, dgc, None, None, None, None, scale, TQ, TK, 0, TQP, TKP,
                          IS_VARLEN=False, USE_TMA=False, **common)
        return dq, dk, dv, dgc
    cfg_kv = _blocks("dkdv" if G == 1 else "dkdv_gqa", BK)
    cfg_q = _blocks("dq" if q.element_size() == 2 else "dq_fp32", BK)
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
        desc_q, desc_do = _tile_descriptors(q, do, cfg_kv["BT"], BK)
        _DKDV(
            grid_kv, q, k, v, *rows, do, dk, dv, dgc_k, cu_seqlens, chunks_kv, desc_q, desc_do, scale, TQ, TK, TQP, TKP,
            IS_VARLEN=varlen, USE_TMA=desc_q is not None, **common, **cfg_kv)
    if dgc_k is not None and dgc is None:
        dgc = dgc_k.clone()  # the dq kernel writes over the query positions
    if NT > 0:
        desc_k, desc_v = _tile_descriptors(k, v, cfg_q["BS"], BK)
        _DQ(
            grid_q, q, k, v, *rows, do, dq, dgc_k, dgc, cu_seqlens, chunks_q, desc_k, desc_v, scale, TQ, TK, NT, TQP, TKP,
            IS_VARLEN=varlen, USE_TMA=desc_k is not None, **common, **cfg_q)
    return dq, dk, dv, dgc


def _gate_sums(g, gc, cu_seqlens, rows: bool = False):
    """(gc, gct): running sums of the log gates per sequence, from raw gates g (one scan launch, which
    also writes the base-2 rows gct when ``rows``) or gc as given (gct None: built where needed), or
    (None, None) when ungated."""
    if g is not None:
        gct = None
        if rows:
            gct, _ = _rows_buffer(g.shape[0], g.shape[1], g.shape[2], g.device)
        return gate_scan(g, cu_seqlens, rows=gct), gct
    return (gc.float().contiguous() if gc is not None else None), None


class ParallelAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, gc, scale, cu_seqlens, return_lse):
        # g (raw gates) -> running sums per sequence; gc given directly when continuing a cache. The
        # base-2 rows are kept for the backward (one fp32 value per (token, head), as gc)
        gc_in, gct = _gate_sums(g, gc, cu_seqlens, rows=True)
        o, lse = parallel_attn_fwd(q, k, v, gc_in, scale, cu_seqlens, gct)
        ctx.save_for_backward(q, k, v, o, gc_in, lse)
        ctx.gct = gct  # an intermediate of this call (no input or output): kept without the version checks
        ctx.scale, ctx.cu_seqlens = scale, cu_seqlens
        ctx.has_g, ctx.has_gc = g is not None, gc is not None
        ctx.g_dtype = g.dtype if g is not None else (gc.dtype if gc is not None else None)
        if not return_lse:  # one output: less autograd bookkeeping per call
            return o
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    def backward(ctx, do, *_):
        q, k, v, o, gc, lse = ctx.saved_tensors
        dq, dk, dv, dgc = parallel_attn_bwd(q, k, v, o, gc, lse, do.contiguous(), ctx.scale, ctx.cu_seqlens, ctx.gct)
        dg = gate_scan(dgc, ctx.cu_seqlens, reverse=True).to(ctx.g_dtype) if ctx.has_g else None
        dgc_out = dgc.to(ctx.g_dtype) if ctx.has_gc else None
        return dq, dk, dv, dg, dgc_out, None, None, None


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
        o [B, Tq, HQ, D] in q's dtype (and lse when asked). Differentiable in q, k, v, g (and gc);
        when nothing needs a gradient (inference) the autograd Function is skipped, same outputs.
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
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, g, gc)):
        # (o, lse) when return_lse, else o
        return ParallelAttentionFunction.apply(q, k, v, g, gc, float(scale), cu_seqlens, return_lse)
    # inference: the forward launcher directly, no autograd Function (~tens of us of host time)
    gc_in, gct = _gate_sums(g, gc, cu_seqlens, rows=_GATE_T == 1)
    o, lse = parallel_attn_fwd(q, k, v, gc_in, float(scale), cu_seqlens, gct)
    return (o, lse) if return_lse else o
