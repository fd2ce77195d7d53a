"""Triton skinny GEMM y = x W^T + b for few rows (M = x.numel() // K <= 32: decode steps).

Same semantics as ``naive.linear`` (fp32 accumulation, output in x's dtype). At M = 1..32 a linear
map is one read of W [N, K] and little else, so the kernel is built for HBM bandwidth. The grid is
(weight-row slabs, K splits): each program owns BN rows of W and a range of K, streams its [BN, BK]
weight tiles with 16-byte loads and reads the M rows of x (tiny, L2-resident) beside them:
* M = 1 (FMA path): products accumulate elementwise in an fp32 [BN, BK] block, summed over K once at
  the end. K is a constexpr and the K loop fully unrolled, so every tile's loads are issued before
  the first is used (the model's small maps are then in flight all at once, one DRAM latency);
* M >= 2 (dot path): tensor-core products W_tile @ x_tile^T ([BN, BK] x [BK, BM], BM = max(16, M)
  with zero rows: the "swap AB" skinny GEMM), K loop software-pipelined (num_stages).
Few slabs (N = 576) would leave most SMs idle, so K is split across programs: each writes its fp32
partial [BN, M] to a workspace and bumps a per-slab counter; the last to arrive sums the SPLIT_K
partials in a fixed order (deterministic), adds the bias, writes y and resets the counter to 0
(self-cleaning: one launch, no memset). Block sizes come from a rule per (M, N, K, dtype, SMs)
(``config``, cached): no autotuning at call time, nothing allocated that depends on data, no host
sync -- safe under CUDA-graph capture. The counters are one buffer per device: calls must not run
concurrently on two streams.

``linear_swiglu`` (GLU epilogue, the MLP's fused gate/up map at decode): W [2I, K] holds the gate rows
then the up rows; a program streams gate rows n and up rows I + n side by side (one shared x tile)
and writes silu(gate) * up [..., I] in fp32, rounded once -- no [..., 2I] intermediate and no
separate SwiGLU launch. Split-K keeps both partials and the last arrival applies the epilogue.

``rms_norm_linear`` (RMSNorm folded in, NORM): the GEMM of n = rms_norm(h) * g, h = x + residual, with
no separate norm kernel (at decode the norms before the q/k/v/f map, the MLP's gate/up map and the LM
head). Since rstd is one number per row, y = rstd * sum_k (h_k g_k) W_nk: the K loop multiplies the
tiles h * g (rounded to x's dtype) into the weights and sums h^2 beside them, and the epilogue scales
by rstd -- no load waits for the row statistics (a first version computed rstd in a prologue before
the K loop and gained nothing: that serial pass cost what the norm launch had). With split-K each
split stores its h^2 partial and the slab's last program adds them (the slab's splits cover all of
K). The programs of slab 0 store h (the new residual stream; a fresh buffer, as the others still
read x and the residual), each its own K range. Differs from the unfused pair only by rounding: n is
never rounded to x's dtype as a whole (h * g is, before the product).
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.utils import (cdiv, dot, fix_triton_interpreter_index, next_power_of_2, num_sms, pdl_enabled, pdl_launch,
                           pdl_release, pdl_wait, prefetch_l2)

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if _INTERPRET:
    fix_triton_interpreter_index()

MAX_ROWS = 64  # rows of x one call takes (the dot path keeps BM <= 64 x rows per program)
NUM_LOCKS = 4096  # per-slab split-K counters per device (split-K is for few slabs only)
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _write_out(y, b, b_y, b_u, o_n, m_n, o_m, m_m, N, HAS_B: tl.constexpr, GLU: tl.constexpr):
    """y[m, n] = b_y[n, m] + b[n], or with GLU silu(b_y + b[n]) * (b_u + b[N + n]) (gate row n, up row N + n)."""
    if HAS_B:
        b_y += tl.load(b + o_n, mask=m_n, other=0.0).to(tl.float32)[:, None]
        if GLU:
            b_u += tl.load(b + N + o_n, mask=m_n, other=0.0).to(tl.float32)[:, None]
    if GLU:
        b_y = b_y * tl.sigmoid(b_y) * b_u
    tl.store(y + o_m[None, :] * N + o_n[:, None], b_y.to(y.dtype.element_ty), mask=m_n[:, None] & m_m[None, :])


@triton.jit
def _h_tile(x, r, o_m, m_m, o_k, m_k, stride_xm, stride_rm, HAS_R: tl.constexpr):
    """[BM, BK] tile of h = x + r rounded to x's dtype as PyTorch's bf16/fp16 add does (x alone without r)."""
    m_x = m_m[:, None] & m_k[None, :]
    b_h = tl.load(x + o_m[:, None] * stride_xm + o_k[None, :], mask=m_x, other=0.0)
    if HAS_R:
        b_r = tl.load(r + o_m[:, None] * stride_rm + o_k[None, :], mask=m_x, other=0.0)
        b_h = (b_h.to(tl.float32) + b_r.to(tl.float32)).to(x.dtype.element_ty)
    return b_h


@triton.jit
def _x_tile(x, r, g, h, o_m, m_m, o_k, m_k, stride_xm, stride_rm, write_h,
            K: tl.constexpr, NORM: tl.constexpr, HAS_R: tl.constexpr):
    """[BM, BK] tile of the GEMM's input in x's dtype and its rows' sum of squares [BM] (fp32).
    Without NORM: the x tile (sums 0). With NORM: h * g of h = x + r (rounded to x's dtype like
    kernels/norm; h = x without r), stored to h where ``write_h``; the rows' 1 / rms(h) is applied to
    the finished products (rstd * sum_k h_k g_k W_nk), so no load waits for the row statistics."""
    if NORM:
        b_h = _h_tile(x, r, o_m, m_m, o_k, m_k, stride_xm, stride_rm, HAS_R)
        if HAS_R:
            tl.store(h + o_m[:, None] * K + o_k[None, :], b_h, mask=m_m[:, None] & m_k[None, :] & write_h)
        b_hf = b_h.to(tl.float32)
        b_g = tl.load(g + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_x = (b_hf * b_g[None, :]).to(x.dtype.element_ty)
        b_ss = tl.sum(b_hf * b_hf, 1)
    else:
        b_x = tl.load(x + o_m[:, None] * stride_xm + o_k[None, :], mask=m_m[:, None] & m_k[None, :], other=0.0)
        b_ss = tl.zeros([o_m.shape[0]], dtype=tl.float32)
    return b_x, b_ss


@triton.jit
def skinny_linear_kernel(x, r, g, h, w, b, y, part, lock, M, N, stride_xm, stride_rm, stride_wn, eps,
                         K: tl.constexpr, K_SPLIT: tl.constexpr, SPLIT_K: tl.constexpr,
                         BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                         USE_DOT: tl.constexpr, HAS_B: tl.constexpr, GLU: tl.constexpr, DOT_PREC: tl.constexpr,
                         NORM: tl.constexpr, HAS_R: tl.constexpr,
                         USE_PDL: tl.constexpr = False, LINE: tl.constexpr = 64, NL: tl.constexpr = 1):
    # N: output columns. GLU: W holds 2N rows (gate rows 0..N-1, up rows N..2N-1) and a program
    # streams the matching up rows beside its gate rows (b_u); the epilogue writes silu(gate) * up.
    # NORM: the GEMM's input is RMSNorm(h) * g of h = x + r (HAS_R; else h = x). The K loop multiplies
    # h * g and sums h^2 over its K range; the epilogue scales by rstd = 1 / sqrt(sum h^2 / K + eps)
    # (with split-K the slab's last program sums the splits' h^2 partials, which cover all of K).
    # The programs of slab 0 store h, each its K range.
    i_n, i_k = tl.program_id(0), tl.program_id(1)
    o_n = i_n * BN + tl.arange(0, BN)
    o_m = tl.arange(0, BM)
    m_n, m_m = o_n < N, o_m < M
    p_w = w + o_n.to(tl.int64)[:, None] * stride_wn
    p_u = w + (o_n.to(tl.int64) + N)[:, None] * stride_wn
    k0 = i_k * K_SPLIT
    write_h = i_n == 0
    # PDL: the next kernel may be scheduled now; this program's weight lines (LINE elements each, NL
    # per row) go to L2 while the previous kernel finishes; x, h, y and the split-K state wait for it
    pdl_release(USE_PDL)
    if USE_PDL:
        o_nc = tl.minimum(o_n, N - 1).to(tl.int64)[:, None] * stride_wn
        o_kl = tl.minimum(k0 + tl.arange(0, NL) * LINE, K - 1)[None, :]
        prefetch_l2(w + o_nc + o_kl, USE_PDL)
        if GLU:
            prefetch_l2(w + o_nc + N * stride_wn + o_kl, USE_PDL)
    pdl_wait(USE_PDL)
    b_ss = tl.zeros([BM], dtype=tl.float32)  # NORM: sum of h^2 over this program's K range
    if USE_DOT:
        b_y = tl.zeros([BN, BM], dtype=tl.float32)
        b_u = tl.zeros([BN, BM], dtype=tl.float32)
        for i in tl.range(0, K_SPLIT, BK):
            o_k = k0 + i + tl.arange(0, BK)
            m_k = o_k < K
            m_wk = m_n[:, None] & m_k[None, :]
            b_x, b_sst = _x_tile(x, r, g, h, o_m, m_m, o_k, m_k, stride_xm, stride_rm, write_h, K, NORM, HAS_R)
            b_ss += b_sst
            b_x = tl.trans(b_x)
            b_y += dot(tl.load(p_w + o_k[None, :], mask=m_wk, other=0.0), b_x, DOT_PREC)
            if GLU:
                b_u += dot(tl.load(p_u + o_k[None, :], mask=m_wk, other=0.0), b_x, DOT_PREC)
    else:  # M = 1: x tiles [BM = 1, BK] broadcast over the [BN, BK] weight tiles
        b_acc = tl.zeros([BN, BK], dtype=tl.float32)
        b_accu = tl.zeros([BN, BK], dtype=tl.float32)
        for i in tl.static_range(0, K_SPLIT, BK):
            o_k = k0 + i + tl.arange(0, BK)
            m_k = o_k < K
            m_wk = m_n[:, None] & m_k[None, :]
            b_x, b_sst = _x_tile(x, r, g, h, o_m, m_m, o_k, m_k, stride_xm, stride_rm, write_h, K, NORM, HAS_R)
            b_ss += b_sst
            b_x = b_x.to(tl.float32)
            b_acc += tl.load(p_w + o_k[None, :], mask=m_wk, other=0.0).to(tl.float32) * b_x
            if GLU:
                b_accu += tl.load(p_u + o_k[None, :], mask=m_wk, other=0.0).to(tl.float32) * b_x
        b_y = tl.sum(b_acc, 1)[:, None]  # [BN, BM = 1]
        b_u = tl.sum(b_accu, 1)[:, None]
    if SPLIT_K == 1:
        if NORM:
            b_rstd = tl.rsqrt(b_ss / K + eps)[None, :]
            b_y, b_u = b_y * b_rstd, b_u * b_rstd
        _write_out(y, b, b_y, b_u, o_n, m_n, o_m, m_m, N, HAS_B, GLU)
    else:
        NP: tl.constexpr = 2 if GLU else 1  # partials [SPLIT_K, NP, M, N] fp32 (GLU: gate, then up)
        o_p = o_m[None, :] * N + o_n[:, None]
        m_p = m_n[:, None] & m_m[None, :]
        p_ss = part + SPLIT_K * NP * M * N + i_n * SPLIT_K * M + o_m  # NORM: h^2 partials [slabs, SPLIT_K, M]
        tl.store(part + i_k * NP * M * N + o_p, b_y, mask=m_p)
        if GLU:
            tl.store(part + (i_k * NP + 1) * M * N + o_p, b_u, mask=m_p)
        if NORM:
            tl.store(p_ss + i_k * M, b_ss, mask=m_m)
        tl.debug_barrier()  # all threads' partials are written before the counter moves (release)
        count = tl.atomic_add(lock + i_n, 1, sem="acq_rel")
        if count == SPLIT_K - 1:  # the last split of this slab to finish sums them all
            b_s = tl.zeros([BN, BM], dtype=tl.float32)
            b_su = tl.zeros([BN, BM], dtype=tl.float32)
            b_sss = tl.zeros([BM], dtype=tl.float32)
            for s in tl.static_range(SPLIT_K):
                b_s += tl.load(part + s * NP * M * N + o_p, mask=m_p, other=0.0, cache_modifier=".cg")
                if GLU:
                    b_su += tl.load(part + (s * NP + 1) * M * N + o_p, mask=m_p, other=0.0, cache_modifier=".cg")
                if NORM:
                    b_sss += tl.load(p_ss + s * M, mask=m_m, other=0.0, cache_modifier=".cg")
            tl.store(lock + i_n, 0)
            if NORM:
                b_rstd = tl.rsqrt(b_sss / K + eps)[None, :]
                b_s, b_su = b_s * b_rstd, b_su * b_rstd
            _write_out(y, b, b_s, b_su, o_n, m_n, o_m, m_m, N, HAS_B, GLU)


class Config(NamedTuple):
    BN: int  # weight rows per program
    BK: int  # K tile
    SPLIT_K: int  # K splits asked for (the launch uses cdiv(K, K_SPLIT) of K_SPLIT = whole BK tiles each)
    USE_DOT: bool  # tensor-core path (any M <= 64); the FMA path takes M = 1 only
    num_warps: int
    num_stages: int = 1


def _pick_bk(K: int, candidates: tuple[int, ...]) -> int:
    """The widest K tile that pads K by at most 12.5%, else the one that pads least."""
    fits = [c for c in candidates if cdiv(K, c) * c * 8 <= K * 9]
    return max(fits) if fits else min(candidates, key=lambda c: (cdiv(K, c) * c, -c))


@functools.cache
def config(M: int, N: int, K: int, elem_bytes: int, sms: int) -> Config:
    """Block sizes for an [M, K] x [N, K]^T product on a device with ``sms`` SMs: about two programs
    per SM; slabs as wide as that allows; K split when the slabs fill less than one wave."""
    want = 2 * sms
    if M == 1:
        BK = _pick_bk(K, (512, 256, 128, 64, 32, 16))
        BN = 1
        while BN < 16 and cdiv(N, 2 * BN) >= want:
            BN *= 2
        vec = 16 // elem_bytes  # elements per 16-byte load
        num_warps, num_stages, use_dot = max(1, min(4, BN * BK // (32 * vec))), 1, False
    else:
        BK = _pick_bk(K, (128, 64, 32, 16))
        BN = next((c for c in (64, 32) if cdiv(N, c) >= want), 16)
        num_warps, num_stages, use_dot = 4, 3, True
    blocks = cdiv(N, BN)
    split = min(cdiv(K, BK), cdiv(want, blocks)) if blocks < sms else 1
    return Config(BN, BK, split, use_dot, num_warps, num_stages)


_LOCKS: dict[torch.device, torch.Tensor] = {}


def _locks(device: torch.device) -> torch.Tensor:
    lock = _LOCKS.get(device)
    if lock is None:  # zero once; every launch leaves them at zero again
        lock = _LOCKS[device] = torch.zeros(NUM_LOCKS, dtype=torch.int32, device=device)
    return lock


def _dot_prec(dtype: torch.dtype) -> str:
    if _INTERPRET and dtype != torch.float32:  # the interpreter multiplies bf16 as raw integers
        return "upcast"
    return "ieee" if dtype == torch.float32 else "tf32"


class Norm(NamedTuple):
    """The RMSNorm folded into the GEMM: the GEMM's input is rms_norm(h) * weight of
    h = x + residual (x without one); h is written to ``h`` (a fresh [..., K] buffer in x's dtype,
    never x or the residual, which other programs still read) when there is a residual."""
    weight: torch.Tensor  # [K]
    eps: float
    residual: torch.Tensor | None = None  # like x
    h: torch.Tensor | None = None  # out: x + residual (given with the residual)


def run(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, cfg: Config,
        out: torch.Tensor | None = None, glu: bool = False, norm: Norm | None = None) -> torch.Tensor:
    """``linear`` (or with ``glu`` ``linear_swiglu``; with ``norm`` of the normed x: ``rms_norm_linear``)
    with explicit block sizes (tests and the benchmark's sweep), optionally into ``out`` (contiguous,
    [..., N] in x's dtype; N = rows of W, halved by glu)."""
    K = x.shape[-1]
    if weight.ndim != 2 or weight.shape[1] != K:
        raise ValueError(f"weight {tuple(weight.shape)} does not take {K} inputs")
    if x.dtype != weight.dtype or x.dtype not in _DTYPES:
        raise ValueError(f"x {x.dtype} and weight {weight.dtype} must share one of {_DTYPES}")
    if glu and weight.shape[0] % 2:
        raise ValueError(f"gate/up weight needs an even number of rows, got {weight.shape[0]}")
    N = weight.shape[0] // 2 if glu else weight.shape[0]
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias {tuple(bias.shape)} != ({weight.shape[0]},)")
    if weight.stride(1) != 1 and K > 1:
        raise ValueError("weight rows must be contiguous")
    x2 = _rows(x, K)
    M = x2.shape[0]
    if M > MAX_ROWS or (M > 1 and not cfg.USE_DOT):
        raise ValueError(f"{M} rows: the FMA path takes 1, the dot path at most {MAX_ROWS}")
    y = torch.empty(*x.shape[:-1], N, dtype=x.dtype, device=x.device) if out is None else out
    if y.shape != (*x.shape[:-1], N) or y.dtype != x.dtype or not y.is_contiguous():
        raise ValueError(f"out must be contiguous {x.dtype} {(*x.shape[:-1], N)}")
    r2, h = x2, x2  # placeholders: without a residual the kernel neither reads r nor writes h
    if norm is not None:
        _check_norm(x, norm)
        if norm.residual is not None:
            r2, h = _rows(norm.residual, K), norm.h
    if M == 0 or N == 0 or K == 0:
        if norm is not None and norm.residual is not None and M and K:
            torch.add(x, norm.residual, out=norm.h)  # no GEMM to fold it into
        if M == 0 or N == 0:
            return y
        if bias is None:  # x W^T = 0: y = b (glu: silu(b_gate) * b_up)
            return y.zero_()
        b = bias.float()
        return y.copy_((F.silu(b[:N]) * b[N:] if glu else b).expand_as(y))
    K_SPLIT = cdiv(cdiv(K, cfg.BK), cfg.SPLIT_K) * cfg.BK
    split = cdiv(K, K_SPLIT)
    grid = (cdiv(N, cfg.BN), split)
    if split > 1 and grid[0] > NUM_LOCKS:
        raise ValueError(f"split-K needs at most {NUM_LOCKS} slabs, got {grid[0]}")
    # split-K partials [split, 1 or 2, M, N] fp32, then (norm) the h^2 partials [slabs, split, M]
    n_part = split * (2 if glu else 1) * M * N + (grid[0] * split * M if norm is not None else 0)
    part = torch.empty(n_part, dtype=torch.float32, device=x.device) if split > 1 else y
    g, eps = (norm.weight.contiguous(), float(norm.eps)) if norm is not None else (x2, 0.0)
    pdl = pdl_enabled(x.device)
    line = 128 // weight.element_size()
    skinny_linear_kernel[grid](
        x2, r2, g, h, weight, bias if bias is not None else weight, y, part,
        _locks(x.device), M, N, x2.stride(0), r2.stride(0), weight.stride(0), eps,
        K=K, K_SPLIT=K_SPLIT, SPLIT_K=split,
        BM=max(16, next_power_of_2(M)) if cfg.USE_DOT else 1, BN=cfg.BN, BK=cfg.BK, USE_DOT=cfg.USE_DOT,
        HAS_B=bias is not None, GLU=glu, DOT_PREC=_dot_prec(x.dtype),
        NORM=norm is not None, HAS_R=norm is not None and norm.residual is not None,
        USE_PDL=pdl, LINE=line, NL=next_power_of_2(cdiv(K_SPLIT, line)),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **pdl_launch(pdl),
    )
    return y


def _rows(t: torch.Tensor, K: int) -> torch.Tensor:
    t2 = t.reshape(-1, K)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _check_norm(x: torch.Tensor, norm: Norm) -> None:
    """The norm weight fits x; a residual comes with an h buffer of x's shape that aliases neither input."""
    K = x.shape[-1]
    if norm.weight.shape != (K,):
        raise ValueError(f"norm weight {tuple(norm.weight.shape)} does not match {K} channels")
    if norm.residual is None:
        return
    r, h = norm.residual, norm.h
    if r.shape != x.shape or r.dtype != x.dtype:
        raise ValueError(f"residual {r.dtype} {tuple(r.shape)} != x {x.dtype} {tuple(x.shape)}")
    if h is None or h.shape != x.shape or h.dtype != x.dtype or not h.is_contiguous():
        raise ValueError(f"h must be a contiguous {x.dtype} {tuple(x.shape)} buffer")
    if h.numel() and any(h.data_ptr() == t.data_ptr() for t in (x, r)):
        raise ValueError("h must not alias x or the residual (other programs still read them)")


def _config_for(x: torch.Tensor, N: int) -> Config:
    K = x.shape[-1]
    return config(x.numel() // K if K else 0, N, K, x.element_size(), num_sms(x.device))


def linear(
    x: torch.Tensor,  # [..., K], M = x.numel() // K <= MAX_ROWS rows
    weight: torch.Tensor,  # [N, K] (rows contiguous), x's dtype
    bias: torch.Tensor | None = None,  # [N]
) -> torch.Tensor:  # [..., N] in x's dtype
    return run(x, weight, bias, _config_for(x, weight.shape[0]))


def linear_swiglu(
    x: torch.Tensor,  # [..., K], M = x.numel() // K <= MAX_ROWS rows
    weight: torch.Tensor,  # [2 I, K] (rows contiguous): gate rows 0..I-1, then up rows I..2I-1
    inter: int,  # I
    bias: torch.Tensor | None = None,  # [2 I]
) -> torch.Tensor:  # silu(x W_gate^T + b_gate) * (x W_up^T + b_up): [..., I] in x's dtype
    if weight.shape[0] != 2 * inter:
        raise ValueError(f"weight has {weight.shape[0]} rows, not 2 x {inter}")
    # the config of an I-row map: each program then streams twice its rows (gate and up slabs)
    return run(x, weight, bias, _config_for(x, inter), glu=True)


def rms_norm_linear(
    x: torch.Tensor,  # [..., K], M = x.numel() // K <= MAX_ROWS rows
    norm_weight: torch.Tensor,  # [K]
    eps: float,
    weight: torch.Tensor,  # [N, K] (rows contiguous), x's dtype; with inter [2 I, K] gate rows, then up rows
    bias: torch.Tensor | None = None,  # [N]
    residual: torch.Tensor | None = None,  # like x
    inter: int | None = None,  # I: the SwiGLU epilogue (linear_swiglu)
) -> tuple[torch.Tensor, torch.Tensor]:  # (y [..., N or I], h = x + residual [..., K]) in x's dtype
    """linear(rms_norm(h) * norm_weight, weight, bias) (or linear_swiglu with ``inter``) of h = x + residual,
    the norm computed inside the GEMM: one kernel instead of the norm kernel and the GEMM."""
    if inter is not None and weight.shape[0] != 2 * inter:
        raise ValueError(f"weight has {weight.shape[0]} rows, not 2 x {inter}")
    h = torch.empty(x.shape, dtype=x.dtype, device=x.device) if residual is not None else x
    norm = Norm(norm_weight, eps, residual, h if residual is not None else None)
    cfg = _config_for(x, weight.shape[0] if inter is None else inter)
    y = run(x, weight, bias, cfg, glu=inter is not None, norm=norm)
    return y, h
