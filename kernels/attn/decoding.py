"""Triton split-KV (flash-decoding) gated attention against a preallocated KV cache.

Same semantics and signatures as ``decode_attn``, ``update_cache`` and ``rebase_gate_cache`` in
``naive.py``:
    q        [B, Tq, HQ, D]    the newest Tq tokens of each sequence (Tq = 1, or a few, <= 16 or so)
    k_cache  [B, Tmax, H, D]   v_cache alike; the new tokens' keys/values are already appended
    gc_cache [B, Tmax, HQ]     fp32 running sums of the log forget gates (None = ungated)
    cache_seqlens int32 [B]    valid length L of each sequence, new tokens included
    query t sits at position L - Tq + t and sees keys j <= L - Tq + t with
        s_tj = scale * q_t . k_j + gc[L - Tq + t] - gc[j]

Decode reads the whole cache to produce a handful of rows, so the only cost that matters is
reading K and V once at memory speed (the two numbers are in docs/notes-decode.md). The kernel:

* ``decode_split_kernel``, grid (H, NS, B): program (i_h, i_s, i_b) takes the i_s-th of NS equal
  slices of sequence b's valid range [0, L) (slices are whole blocks of BS keys; L is read on the
  device) for KV head h, and serves all Tq * G query rows of that head at once (G = HQ // H, row
  r = t * G + g), so each K/V element is read from memory once. The query tile is [BM, D]
  (BM = Tq * G rounded up to a power of two) against a [BS, D] key tile with ``tl.dot``; a tile of
  fewer than 16 rows is padded to 16 (``SMALL_TILE_DOT``; the broadcast multiply-and-reduce path
  for it is kept, ``use_dot=False``, but measured 4x slower on H100: its loads get no cp.async
  pipelining, while the padded dot's extra MMA work is free in a memory-bound loop). Online softmax in exp2;
  the partial result is stored normalised with its log2-sum-exp; a program whose slice starts past
  L stores lse = -inf (a neutral partial) and reads nothing.
* ``decode_merge_kernel``, grid (B * Tq * HQ,): merges the NS partials of one row exactly through
  their log-sum-exp, in a fixed order (deterministic). When NS == 1 the split kernel writes the
  output itself and no merge runs.
* ``MERGE = "fused"`` (or ``merge="fused"``): no second launch. Each split program, after storing its
  partial, increments a per-(b, KV head) counter (atomic, acquire-release); the program that brings
  it to NS merges the NS partials of that head's rows in slice order (so the result does not depend
  on which program finished last) and stores 0 back, so the counters are 0 between launches and a
  captured graph can be replayed. The counters are one int32 buffer per device, allocated zeroed
  once and grown (never shrunk) on demand: decode calls that run concurrently on two streams of one
  device would share them (the engine runs one stream at a time). Chosen per call or by the
  environment variable GATEDGEN_DECODE_MERGE=kernel|fused; the bench sweep compares the two.

* ``append_kv_kernel`` (``update_cache``, and the fused forget gate of kernels/gate), grid
  (cdiv(Tn, chunk), B, H): each program copies one chunk of the new tokens (by default one tile of
  BT tokens, so a long prompt is copied by many programs at once) and continues the running sums of
  its G query heads from gc[L - 1] plus the sum of the earlier tokens' gates, which it recomputes
  from the gate input (G values per token: cheap next to the K/V rows). A decode step (Tn = 1) is one
  program per (b, KV head), as before. Its host side (``append_kv``, ``update_cache``,
  ``rebase_gate_cache``) is in ``cache_update.py`` and re-exported here.
* Host work per call: the launch plan (checks, split count, constexprs) is cached per key of shapes,
  strides, dtypes and settings, and the split kernel is launched through ``kernels.launch.LaunchCache``.
  An eager call is bound by the host at small caches (1 x 4096 on the H100 machine: 68 us of host
  work against 13 us of kernel); a graph replay has no host work at all.

NS depends only on static shapes (B, H, Tmax, the SM count), never on the lengths, and nothing is
copied to the host, so a decode step can be captured in a CUDA graph once and replayed while
``cache_seqlens`` grows in place. Because the slices are cut from L on the device, all NS programs
of a sequence share its work whatever its current length.

Long contexts and the gate running sums. gc is kept in fp32. Scores only use differences
gc_i - gc_j, so adding one constant to all of a sequence's running sums (per head) changes no score
and no output: shifting is exact. What is not exact is fp32 resolution: after n tokens |gc| grows
like n * |mean gate|, and fp32 resolves a difference of two such numbers only to about
|gc| * 6e-8, which for |gc| = 1e5 is 6e-3 in a score -- an error in the weights of the recent,
not-yet-forgotten keys (older keys have exp(gc_i - gc_j) ~ 0 anyway). ``rebase_gate_cache``
subtracts each sequence's newest running sum from all its entries, so the recent entries sit near 0
where fp32 is finest; the generation loop calls it every few thousand tokens (it costs one pass
over gc, ~4 * L * HQ bytes read and written per sequence). ``update_cache`` continues the running
sum from the (possibly rebased) newest entry, so rebasing and appending commute.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

from kernels.attn.cache_update import append_kv, rebase_gate_cache, update_cache
from kernels.attn.decoding_kernels import decode_merge_kernel, decode_split_kernel
from kernels.launch import LaunchCache
from kernels.utils import LOG2E, cdiv, next_power_of_2, num_sms, pdl_enabled, pdl_launch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

__all__ = ["append_kv", "decode_attn", "merge_counters", "num_splits", "rebase_gate_cache", "update_cache"]

# Launch defaults (measured on H100, see docs/notes-decode.md); tests and the bench override them.
# split count target: NS * B * H ~ PROGRAMS_PER_SM * SMs; 1 with the fused merge was the sweep's best on
# the H100 (2026-11-24: 1x4096 19.4 us vs 21.8 for 4 + merge kernel; 1x32768 66.6 vs 72.4 us)
PROGRAMS_PER_SM = 1
MAX_SPLITS = 128
SPLIT_RULE = "waves"  # num_splits: whole waves of programs ("ceil": the earlier rule, kept for the sweep)
SPLIT_OVERHEAD = 256  # a program's fixed cost (prologue, partial write, merge) in cache tokens, modelled
MERGE_BLOCK = 32  # partials merged per step in the merge kernel
# tiles of < 16 query rows (Tq * G): pad to a 16-row tl.dot tile (True) or broadcast-multiply-reduce
SMALL_TILE_DOT = True  # measured: padded dot 1.6-2.6 TB/s, broadcast 0.4 TB/s (H100, notes)
# how the NS > 1 partials are merged: "kernel" (a second launch, decode_merge_kernel) or "fused" (the
# last split program of each (b, KV head) merges, one launch); "fused" won the H100 sweep (notes)
MERGE_MODES = ("kernel", "fused")
MERGE = os.environ.get("GATEDGEN_DECODE_MERGE", "fused")
SINGLE_SLICE_BLOCK = 32  # key tile when a sequence's cache is one slice (NS = 1), ungated, head dim 128 (_plan)
MERGE_TILE = 8192  # elements of the fused merge's [rows, slices, D] tile (64 fp32 registers per thread)

_COUNTERS: dict[torch.device, torch.Tensor] = {}


def merge_counters(device: torch.device, n: int) -> torch.Tensor:
    """At least n zeroed int32 counters on ``device`` for the fused merge (cached; the kernel leaves
    them at 0). Allocate them before capturing a graph (any eager call does): grown to a power of two,
    at least 1024, so that a capture rarely meets a new size."""
    device = torch.device(device)
    buf = _COUNTERS.get(device)
    if buf is None or buf.numel() < n:
        buf = torch.zeros(max(1024, next_power_of_2(n)), dtype=torch.int32, device=device)
        _COUNTERS[device] = buf
    return buf


def _check(q, k_cache, v_cache, gc_cache, cache_seqlens):
    if cache_seqlens is None:
        raise ValueError("cache_seqlens is required")
    if q.dim() != 4 or k_cache.dim() != 4 or v_cache.dim() != 4:
        raise ValueError("q, k_cache, v_cache must be 4-D [B, T, H, D]")
    B, Tq, HQ, D = q.shape
    if k_cache.shape != v_cache.shape or k_cache.shape[0] != B or k_cache.shape[3] != D:
        raise ValueError(
            f"q {tuple(q.shape)}, k_cache {tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)} disagree"
        )
    H = k_cache.shape[2]
    if HQ % H != 0:
        raise ValueError(f"query heads ({HQ}) must be a multiple of key/value heads ({H})")
    if k_cache.stride(3) != 1 or v_cache.stride(3) != 1 or k_cache.stride(2) != D or v_cache.stride(2) != D:
        raise ValueError("k_cache / v_cache need contiguous [H, D] rows")
    if gc_cache is not None:
        if gc_cache.shape != (B, k_cache.shape[1], HQ) or gc_cache.dtype != torch.float32:
            got = f"{gc_cache.dtype} {tuple(gc_cache.shape)}"
            raise ValueError(f"gc_cache must be fp32 [B, Tmax, HQ], got {got}")
        if not gc_cache.is_contiguous():
            raise ValueError("gc_cache must be contiguous")
    if cache_seqlens.shape != (B,):
        raise ValueError(f"cache_seqlens must be [B], got {tuple(cache_seqlens.shape)}")
    return B, Tq, HQ, H, D


def num_splits(
    B: int, H: int, Tmax: int, block_s: int, device: torch.device, programs_per_sm: int | None = None,
    rule: str | None = None,
) -> int:
    """Static split count NS (B * H * NS programs), at most one split per BS-block.

    ``waves`` (default): the NS that minimises the step's modelled time ceil(P / slots) * (Tmax / NS
    + SPLIT_OVERHEAD) over P = B * H * NS programs on slots = programs_per_sm * SMs: the busiest slot
    sets the time, so a grid one program past a full wave costs a second wave (1 x 32768 at 8 KV
    heads on 132 SMs: 16 splits = 128 programs, not 17 = 136; 8 x 8192: 2 splits = 128, not 3 = 192).
    ``ceil``: the earlier rule, NS = ceil(slots / (B * H)). Cached: a decode step calls it per layer."""
    return _num_splits(B, H, Tmax, block_s, (programs_per_sm or PROGRAMS_PER_SM) * num_sms(device),
                       rule or SPLIT_RULE)


@functools.lru_cache(maxsize=4096)
def _num_splits(B: int, H: int, Tmax: int, block_s: int, slots: int, rule: str) -> int:
    most = max(1, min(cdiv(Tmax, block_s), MAX_SPLITS))
    if rule == "ceil":
        return max(1, min(cdiv(slots, B * H), most))
    if rule != "waves":
        raise ValueError(f"split rule must be 'waves' or 'ceil', got {rule!r}")
    return min(range(1, most + 1), key=lambda ns: cdiv(B * H * ns, slots) * (Tmax / ns + SPLIT_OVERHEAD))


@dataclass(frozen=True)
class _Plan:
    """Everything about one decode launch that depends only on shapes, strides, dtypes and settings
    (cached per key by ``_plan``: an eager step is bound by host work at small shapes)."""

    out_shape: tuple  # [B, Tq, HQ, D]
    contiguous_q: bool
    NS: int
    fuse: bool  # merge fused into the split kernel (NS > 1)
    n_part: int  # B * Tq * HQ * NS partial rows (NS > 1)
    n_counters: int  # B * H
    grid: tuple  # (H, NS, B)
    strides: tuple  # k and v batch / token strides, Tmax
    meta: dict  # constexprs and launch options of the split kernel (PDL added per call)
    merge_grid: tuple | None  # the merge kernel's grid when it runs (NS > 1, not fused)
    merge_meta: dict | None


_PLANS: dict[tuple, _Plan] = {}
_SPLIT = LaunchCache(decode_split_kernel)
_MERGE_KERNEL = LaunchCache(decode_merge_kernel)


def _plan(q, k_cache, v_cache, gc_cache, cache_seqlens, splits, block_s, num_warps, num_stages, use_dot,
          programs_per_sm, merge, split_rule) -> _Plan:
    B, Tq, HQ, H, D = _check(q, k_cache, v_cache, gc_cache, cache_seqlens)
    Tmax, G = k_cache.shape[1], HQ // H
    M = Tq * G
    BD = max(16, next_power_of_2(D))
    if use_dot is None:
        use_dot = M >= 16 or SMALL_TILE_DOT
    if q.dtype == torch.float32:
        # Triton turns the fp32 broadcast-multiply-sum into a tf32 dot (5e-4 error, seen on H100):
        # fp32 always takes the dot path, in ieee precision
        use_dot = True
    BM = max(16 if use_dot else 1, next_power_of_2(M))
    block_given = block_s is not None
    if block_s is None:
        # dot: [BS, BD] K and V tiles, num_stages deep in shared memory (cp.async, 16-byte rows);
        # broadcast: keep the [BM, BS, BD] product in registers (no spills at BM * BS * BD <= 8192)
        block_s = (64 if BD <= 128 else 32) if use_dot else max(16, min(64, 8192 // (BM * BD)))
    if num_warps is None:
        num_warps = 4 if BM * BD <= 64 * 128 else 8
    if num_stages is None:
        num_stages = 3 if BD <= 128 else 2
    NS = splits or num_splits(B, H, Tmax, block_s, q.device, programs_per_sm, split_rule)
    if NS == 1 and use_dot and BD == 128 and gc_cache is None and not block_given:
        # one slice per (sequence, KV head), ungated: 32-key tiles (3 stages, 42 KB of shared memory) read
        # faster than 64-key ones. H100, 32 x 4096 (256 programs), graph-replayed, 2026-11-24: 187.0 vs
        # 190.7 us as one call, 186.5 vs 196.7 us per layer in an 8-layer stream. Gated calls keep 64 keys:
        # 193.7 vs 201.3 us as one call but 221.4 vs 187.7 in the stream (docs/notes-decode.md, session 13)
        block_s = SINGLE_SLICE_BLOCK
    merge = merge or MERGE
    if merge not in MERGE_MODES:
        raise ValueError(f"merge must be one of {MERGE_MODES}, got {merge!r}")
    fuse = merge == "fused" and NS > 1
    MR = next_power_of_2(M)
    meta = dict(
        TQ=Tq, H=H, HQ=HQ, G=G, D=D, NS=NS, BM=BM, BS=block_s, BD=BD,
        USE_G=gc_cache is not None, USE_DOT=use_dot,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        FUSE_MERGE=fuse, MR=MR, BNS=max(1, min(next_power_of_2(NS), MERGE_TILE // (MR * BD))),
        INTERPRET=INTERPRET, num_warps=num_warps, num_stages=num_stages,
    )
    two_kernels = NS > 1 and not fuse
    return _Plan(
        out_shape=(B, Tq, HQ, D), contiguous_q=q.is_contiguous(), NS=NS, fuse=fuse,
        n_part=B * Tq * HQ * NS, n_counters=B * H, grid=(H, NS, B),
        strides=(k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1), Tmax),
        meta=meta,
        merge_grid=(B * Tq * HQ,) if two_kernels else None,
        merge_meta=dict(D=D, NS=NS, BD=BD, BNS=min(MERGE_BLOCK, next_power_of_2(NS)), num_warps=4)
        if two_kernels else None,
    )


def _decode_attn(
    q,
    k_cache,
    v_cache,
    gc_cache=None,
    cache_seqlens=None,
    scale=None,
    *,
    out=None,
    splits=None,
    block_s=None,
    num_warps=None,
    num_stages=None,
    use_dot=None,
    programs_per_sm=None,
    workspace=None,
    merge=None,
    counters=None,
    split_rule=None,
):
    """decode_attn with its launch choices exposed (tests and the bench set them). ``merge``: one of
    MERGE_MODES (default MERGE); ``counters``: int32 zeros, >= B * H, for the fused merge.

    The launch plan (checks, split count, constexprs) is computed once per key of shapes, strides,
    dtypes, devices, launch choices and module settings, and the kernel is launched through
    ``LaunchCache``: host work per eager call is what bounds small decode steps."""
    gc_key = None if gc_cache is None else (gc_cache.shape, gc_cache.dtype, gc_cache.is_contiguous())
    key = (
        q.shape, q.dtype, q.stride(), q.device, k_cache.shape, k_cache.dtype, k_cache.stride(),
        v_cache.shape, v_cache.dtype, v_cache.stride(), gc_key,
        None if cache_seqlens is None else cache_seqlens.shape,
        splits, block_s, num_warps, num_stages, use_dot, programs_per_sm, merge, split_rule,
        MERGE, PROGRAMS_PER_SM, SPLIT_RULE, SMALL_TILE_DOT, MERGE_TILE, MAX_SPLITS, SPLIT_OVERHEAD, MERGE_BLOCK,
        SINGLE_SLICE_BLOCK,
    )
    plan = _PLANS.get(key)
    if plan is None:
        plan = _plan(q, k_cache, v_cache, gc_cache, cache_seqlens, splits, block_s, num_warps, num_stages,
                     use_dot, programs_per_sm, merge, split_rule)
        if len(_PLANS) >= 4096:
            _PLANS.clear()
        _PLANS[key] = plan
    D = plan.out_shape[3]
    scale = D**-0.5 if scale is None else scale
    if not plan.contiguous_q:
        q = q.contiguous()
    NS = plan.NS
    if plan.fuse and counters is None:
        counters = merge_counters(q.device, plan.n_counters)
    o = out if out is not None else torch.empty(*plan.out_shape, dtype=q.dtype, device=q.device)
    if NS > 1:
        if workspace is not None:
            o_part, lse_part = workspace
        else:  # two allocations: cheaper on the host than slicing one (two views)
            o_part = torch.empty(plan.n_part * D, dtype=torch.float32, device=q.device)
            lse_part = torch.empty(plan.n_part, dtype=torch.float32, device=q.device)
    else:
        o_part = lse_part = o  # unused
    pdl = (NS == 1 or plan.fuse) and pdl_enabled(q.device)  # the separate merge kernel does not wait
    _SPLIT(
        plan.grid, q, k_cache, v_cache, gc_cache, o, o_part, lse_part,
        counters if plan.fuse else cache_seqlens,  # (unused unless fused)
        cache_seqlens, scale * LOG2E.value, *plan.strides,
        **plan.meta, USE_PDL=pdl, **pdl_launch(pdl),
    )
    if plan.merge_grid is not None:
        _MERGE_KERNEL(plan.merge_grid, o_part, lse_part, o, **plan.merge_meta)
    return o


def decode_attn(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    gc_cache: torch.Tensor | None = None,
    cache_seqlens: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of Tq new tokens per sequence against a preallocated cache (see naive.decode_attn).

    Args:
        q: [B, Tq, HQ, D], the queries of the newest Tq tokens (causal among themselves).
        k_cache, v_cache: [B, Tmax, H, D]; the new tokens' keys/values are already appended.
        gc_cache: [B, Tmax, HQ] fp32 running sums of log gates (None = ungated).
        cache_seqlens: int32 [B] on q's device, valid length including the new tokens (Tq <= L <= Tmax;
            not checked: that would need a host synchronisation).
        scale: defaults to D ** -0.5.

    Returns:
        o [B, Tq, HQ, D] in q's dtype. No host synchronisation and no length-dependent allocation:
        safe to capture in a CUDA graph and replay as cache_seqlens grows in place.
    """
    return _decode_attn(q, k_cache, v_cache, gc_cache, cache_seqlens, scale)
