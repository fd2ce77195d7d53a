"""Host side of the Gluon (sm_90) forward in ``parallel_fwd_hopper``: which calls it takes, the persistent
programs' tile schedule, the TMA descriptors and the launch; and an offline sm_90 compile for the CPU
tests."""

from __future__ import annotations

import functools
import heapq
import itertools
from collections import OrderedDict

import torch
import triton
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from kernels.attn.chunks import sequence_lengths
from kernels.attn.parallel_fwd_hopper import parallel_attn_fwd_hopper_kernel
from kernels.launch import LaunchCache, descriptor
from kernels.utils import is_hopper, num_sms


# head dim (the ones sent here, at any length) -> (BM, BN, STAGES, NQ): BM query rows per tile (two
# consumer warpgroups of BM / 2), BN keys per block, STAGES-deep K and V rings, NQ query buffers (2: the
# next tile's rows load during a tile).
# Shared memory: 2 * NQ * BM / 2 * D + 2 * STAGES * BN * D 16-bit values (192 KB at D=128 for 2 and 2).
# The H100 sweep of 2026-11-24 (session 9, docs/notes-prefill.md): 3 or 4 stages with one or two query
# buffers, and 64-key blocks at D=64, were no faster anywhere than (128, 128, 2, 2).
# D=64 at every length since session 10 (H100: 5-33% faster than the tl kernel from 1k to 16k keys;
# before the softmax overlapped the PV product, the tl kernel won from 8k).
_BLOCKS = {64: (128, 128, 2, 2), 128: (128, 128, 2, 2)}
# (batch x head)s per group of the schedule (_schedule)
_GROUP = 8
# packed batches, gated: a key block's gate sums are loaded by TMA from a column that is a multiple of this
# (16 bytes of fp32); the keys start at the sequence's first row rounded down to it (the kernel's _tile).
# H100, 2026-11-24: loads from other columns stopped the kernel with an illegal-instruction error
_GATE_ALIGN = 4
# calls whose (longest) sequence has at most this many keys: a warpgroup whose rows all precede the middle of
# its tile's last key block takes only that block's first half (the kernel's HALF). H100, kernel from CUDA-graph
# replays, on against off, ten rounds in one process with the variants rotating and a copy of the default as a
# control (2026-11-24, session 14; best / median of the rounds): gated +5.0% / +3.1% at 32x64 T=1k, +2.0% / +3.3%
# at 16x128 T=1k, +4.3% / +4.7% and +3.8% / +3.2% at 2k; ungated +1.8% to +4.6%; the control read -3.4% to +2.3%
# off the default. Session 12 had measured gated calls -4.2% / +0.4% at T=1k (two rounds, no control) and
# took the half block for ungated calls only.
_HALF_MAX_TK = 2048


def supported(q: torch.Tensor, k: torch.Tensor, cu_seqlens, v: torch.Tensor | None = None) -> bool:
    """Whether the dispatch sends the call here: 16-bit, a head dim of ``_BLOCKS``, on sm_90, with
    TMA-able tensors (contiguous, 16-byte aligned) and int32 coordinates; a dense batch, or a packed one
    (cu_seqlens: B = 1, Tq = Tk)."""
    B, TQ, HQ, D = q.shape
    TK = k.shape[1]
    tensors = (q, k) if v is None else (q, k, v)
    return (
        (cu_seqlens is None or (B == 1 and TQ == TK)) and q.is_cuda
        and q.dtype in (torch.bfloat16, torch.float16)
        and D in _BLOCKS
        and all(t.is_contiguous() and t.data_ptr() % 16 == 0 for t in tensors)
        and is_hopper(q.device) and 0 < TQ <= TK
        and B * HQ * (TK + 16) < 2**31
    )


_GL_DTYPE = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16, torch.float32: gl.float32}


@functools.lru_cache(maxsize=None)
def _smem_layout(block: tuple[int, ...], dtype: torch.dtype):
    # cached: building it costs about as much host time as the descriptor itself
    return gl.NVMMASharedLayout.get_default_for(list(block), _GL_DTYPE[dtype])


def _desc(x: torch.Tensor, shape: list[int], block: list[int]) -> TensorDescriptor:
    """The Gluon TMA descriptor of the contiguous tensor x seen as ``shape`` with ``block`` blocks, built
    without re-checks (``launch.descriptor``; under cProfile, 15% of an eager call's host time went to the
    five checked descriptors): every call that ``supported`` lets through passes those checks, and
    test_parallel_hopper compares the result with ``TensorDescriptor.from_tensor``'s."""
    return descriptor(TensorDescriptor, x, shape, block, _smem_layout(tuple(block), x.dtype))


def compile_sm90(D: int, gated: bool, varlen: bool = False, half: bool = True):
    """The kernel compiled for sm_90 without a GPU (``triton.compile`` of the Gluon source for a CUDA 9.0
    target; small batch and head counts, the default blocks of head dim D; packed batches when
    ``varlen``; with the half last block when ``half``): its ``asm`` (ttgir, ptx, cubin) and
    ``metadata`` for resource checks on any machine. Needs TRITON_INTERPRET unset."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    fn = parallel_attn_fwd_hopper_kernel
    BM, BN, STAGES, NQ = _BLOCKS[D]

    def desc(block, dtype=torch.bfloat16):
        layout = _smem_layout(tuple(block), dtype)
        return f"tensordesc<{'fp32' if dtype == torch.float32 else 'bf16'}[{','.join(map(str, block))}],{layout!r}>"

    consts = dict(B=1 if varlen else 2, H=2, HQ=4, G=2, D=D, BM=BM, BN=BN, STAGES=STAGES, NQ=NQ, USE_G=gated,
                  IS_VARLEN=varlen, KA=_GATE_ALIGN if gated and varlen else 1, HALF=half)
    types = dict(desc_q=desc([1, BM // 2, D]), desc_o=desc([1, BM // 2, D]), desc_k=desc([1, BN, D]),
                 desc_v=desc([1, BN, D]), desc_g=desc([1, BN], torch.float32) if gated else None,
                 o="*bf16" if varlen else None, gct="*fp32" if gated else None, lse="*fp32", sched="*i32",
                 tiles="*i32" if varlen else None, scale="fp32", TQ="i32", TK="i32", TKP="i32")
    sig, const = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts or types[name] is None:
            sig[name] = "constexpr"
            const[(i,)] = consts.get(name)
        else:
            sig[name] = types[name]
    src = GluonASTSource(fn, sig, const, {})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4))


def _greedy(costs: list[int], NC: int, n_prog: int, GH: int) -> list[int]:
    """The persistent programs' tile lists as int32 values [n_prog + 1 bounds, then tile ids]: program p
    runs the ids at positions [p] to [p + 1], in that order. A tile id is i_r * NC + column for rows i_r
    of ``costs`` (a tile's key blocks plus one for its prologue and epilogue) and NC columns ((batch x
    head)s, or heads of a packed batch).

    Tiles are taken GH columns at a time, in a group the costliest rows first, and each goes to the
    program with the least work so far: the longest-first greedy rule balances the programs, and programs
    that run at the same time read the keys of few heads, which stay in L2."""
    order = sorted(range(len(costs)), key=lambda i: (costs[i], i), reverse=True)
    heap = [(0, p) for p in range(n_prog)]
    tiles: list[list[int]] = [[] for _ in range(n_prog)]
    for g0 in range(0, NC, GH):
        for i_r in order:
            for col in range(g0, min(g0 + GH, NC)):
                load, p = heap[0]
                tiles[p].append(i_r * NC + col)
                heapq.heapreplace(heap, (load + costs[i_r], p))
    bounds = [n_prog + 1]
    for t in tiles:
        bounds.append(bounds[-1] + len(t))
    return bounds + [i for t in tiles for i in t]


def _schedule(TQ: int, TK: int, BH: int, BM: int, BN: int, n_prog: int, GH: int, device) -> torch.Tensor:
    """A dense batch's schedule (``_greedy``): tile i_t * BH + bh is query tile i_t of (batch x head) bh."""
    NT = triton.cdiv(TQ, BM)
    costs = [triton.cdiv(min(TK - TQ + (i_t + 1) * BM, TK), BN) + 1 for i_t in range(NT)]
    return torch.tensor(_greedy(costs, BH, n_prog, GH), dtype=torch.int32).to(device, non_blocking=True)


def _varlen_tiles(lens: tuple[int, ...], HQ: int, BM: int, BN: int, n_prog: int, GH: int,
                  device) -> tuple[torch.Tensor, torch.Tensor]:
    """A packed batch's schedule (``_greedy``; tile i_c * HQ + head is chunk i_c of that head) and its
    chunk table, [NC, 3] int32 of (first row of the sequence, its length, the chunk's first row in it):
    two views of one tensor (one copy to the device). n_prog: at most the number of tiles."""
    chunks = [(bos, n, t0) for bos, n in zip(itertools.accumulate(lens, initial=0), lens) for t0 in range(0, n, BM)]
    costs = [triton.cdiv(min(t0 + BM, n), BN) + 1 for _, n, t0 in chunks]
    sched = _greedy(costs, HQ, n_prog, GH)
    buf = torch.tensor(sched + [x for c in chunks for x in c], dtype=torch.int32).to(device, non_blocking=True)
    return buf[:len(sched)], buf[len(sched):]


_SCHEDULES: OrderedDict = OrderedDict()  # recent shapes' schedules (at most _SCHEDULES_MAX)
_SCHEDULES_MAX = 64
_CAPTURED: dict = {}  # schedules read by captured CUDA graphs: never freed


def _cached(key, build):
    """``build()``, kept for the recent keys. A captured CUDA graph reads the tensor at replay, so one
    used while capturing is kept for good; building one while capturing (a host-to-device copy) is
    refused: run the call once before the capture, as a warm-up does."""
    capturing = torch.cuda.is_current_stream_capturing()
    sched = _SCHEDULES.get(key)
    if sched is None:
        if capturing:
            raise RuntimeError("the Gluon forward met a new shape inside CUDA-graph capture; "
                               "run it once at that shape before capturing")
        sched = build()
        _SCHEDULES[key] = sched
        if len(_SCHEDULES) > _SCHEDULES_MAX:
            _SCHEDULES.popitem(last=False)
    else:
        _SCHEDULES.move_to_end(key)
    if capturing:
        _keep_captured(key, sched)
    return sched


def _keep_captured(key, sched) -> None:
    """Keep a schedule that a CUDA graph being captured reads at every replay. Kept per object, not per key
    alone: a prepared launch may hold an older schedule of the same key than the cache's."""
    _CAPTURED[(key, id(sched))] = sched


def _schedule_cached(*key) -> tuple[tuple, torch.Tensor]:
    """(cache key, ``_schedule(*key)``) through the cache of recent schedules (``_cached``)."""
    sched_key = ("dense",) + key
    return sched_key, _cached(sched_key, lambda: _schedule(*key))


_LAUNCH = LaunchCache(parallel_attn_fwd_hopper_kernel)


def parallel_attn_fwd_hopper(q, k, v, gct, scale: float, o: torch.Tensor, lse: torch.Tensor,
                             blocks: tuple[int, int, int, int] | None = None, programs: int | None = None,
                             group: int | None = None, cu_seqlens: torch.Tensor | None = None) -> None:
    """Write o [B, TQ, HQ, D] and lse [B, TQ, HQ] (natural log; both contiguous) for q, k, v (contiguous) and
    the base-2 running gate sums as per-head rows gct [B * HQ, TKP] fp32 (None when ungated); packed
    sequences when cu_seqlens is given (B = 1, TQ = TK; their lengths are read on the host, once per
    cu_seqlens object: ``chunks.sequence_lengths``). One program per SM (``programs`` overrides, e.g. for
    tests that give every program many tiles).

    Dense calls replay a prepared launch (``LaunchCache.launch_prepared``) keyed on everything its
    arguments are built from: the device, dtype, shapes, the six tensors' addresses, the scale, the
    launch settings and the module's (tests change them). An eager call at a shape and addresses seen
    before (a benchmark loop, a prefill whose buffers come back at the same addresses) skips the
    descriptors, the schedule lookup and the launch key. H100 machine, 2026-11-25: 48 us of host time
    per call before, 12 after (docs/notes-prefill.md, session 15)."""
    if cu_seqlens is not None:
        launch = _launch_args(q, k, v, gct, scale, o, lse, blocks, programs, group, cu_seqlens)
        if launch is not None:
            grid, args, meta, _ = launch
            _LAUNCH(grid, *args, **meta)
        return
    plan_key = (torch.cuda.current_device(), q.get_device(), q.dtype, k.dtype, v.dtype, o.dtype, q.shape, k.shape,
                q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), lse.data_ptr(),
                None if gct is None else (gct.data_ptr(), gct.shape), scale, blocks, programs, group, _HALF_MAX_TK,
                _GROUP, _BLOCKS.get(q.shape[3]))
    plan = _LAUNCH.launch_prepared(
        plan_key, lambda: _launch_args(q, k, v, gct, scale, o, lse, blocks, programs, group, None))
    if plan is not None and torch.cuda.is_current_stream_capturing():
        _keep_captured(*plan.keep)


def _launch_args(q, k, v, gct, scale, o, lse, blocks, programs, group, cu_seqlens):
    """(grid, args, constexprs and options, (schedule key, schedule)) of ``parallel_attn_fwd_hopper``'s
    launch, or None when a packed batch has no tile."""
    B, TQ, HQ, D = q.shape
    TK, H = k.shape[1], k.shape[2]
    BM, BN, STAGES, NQ = blocks or _BLOCKS[D]
    # seen as [B, T, NH * D]: a [1, rows, D] block of one head; TMA zero-fills rows past T of its batch
    desc_q = _desc(q, [B, TQ, HQ * D], [1, BM // 2, D])
    desc_o = _desc(o, [B, TQ, HQ * D], [1, BM // 2, D])
    desc_k = _desc(k, [B, TK, H * D], [1, BN, D])
    desc_v = _desc(v, [B, TK, H * D], [1, BN, D])
    # a key block's gate sums; zero past the row
    desc_g = _desc(gct, list(gct.shape), [1, BN]) if gct is not None else None
    TKP = gct.shape[1] if gct is not None else 0
    n_prog = programs or num_sms(q.device)
    GH = group or _GROUP
    if cu_seqlens is None:
        n_prog = min(n_prog, triton.cdiv(TQ, BM) * B * HQ)
        sched_key, sched = _schedule_cached(TQ, TK, B * HQ, BM, BN, n_prog, GH, q.device)
        tiles = None
        longest = TK
    else:
        lens = tuple(sequence_lengths(cu_seqlens))
        longest = max(lens, default=0)
        n_prog = min(n_prog, sum(triton.cdiv(n, BM) for n in lens) * HQ)
        if n_prog == 0:
            return None
        sched_key = ("varlen", lens, HQ, BM, BN, n_prog, GH, q.device)
        sched, tiles = _cached(sched_key, lambda: _varlen_tiles(lens, HQ, BM, BN, n_prog, GH, q.device))
    half = longest <= _HALF_MAX_TK
    args = (desc_q, desc_k, desc_v, desc_g, desc_o, o if tiles is not None else None, gct, lse, sched, tiles,
            scale, TQ, TK, TKP)
    # 4 warps here (the producer, the default partition); the two consumers (4 each) are worker partitions
    meta = dict(B=B, H=H, HQ=HQ, G=HQ // H, D=D, BM=BM, BN=BN, STAGES=STAGES, NQ=NQ, USE_G=gct is not None,
                IS_VARLEN=tiles is not None, KA=_GATE_ALIGN if gct is not None and tiles is not None else 1,
                HALF=half, num_warps=4)
    return (n_prog,), args, meta, (sched_key, sched)
