"""Helpers shared by the Triton kernels (one place; never copied into a kernel file)."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


_SM_MAJOR: dict = {}  # device (as passed, not None) -> compute capability major (0: no CUDA)


def sm_major(device: torch.device | None = None) -> int:
    """The compute capability's major number of the device (default: the current one; 0 without CUDA);
    cached per device given (``torch.cuda.get_device_capability`` costs ~10 us of host time per call on
    the H100 machine, and the prefill path asks on every call)."""
    major = _SM_MAJOR.get(device) if device is not None else None
    if major is None:
        major = torch.cuda.get_device_capability(device)[0] if torch.cuda.is_available() else 0
        if device is not None:
            _SM_MAJOR[device] = major
    return major


def is_hopper(device: torch.device | None = None) -> bool:
    """Whether the device (default: the current one) is sm_90 (cached as ``sm_major``)."""
    return sm_major(device) == 9


def cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


_NUM_SMS: dict[int, int] = {}
_PDL: dict = {}  # device (as passed) -> Hopper or later, compiled (not the interpreter)


def pdl_enabled(device: torch.device) -> bool:
    """Programmatic dependent launch for the decode-step kernels: on Hopper and later, compiled kernels,
    while a CUDA graph is being captured (the decode step and prefill graphs), unless GATEDGEN_NO_PDL=1.
    A kernel launched with it may start while the kernel before it in the stream is still running; it
    must pass ``pdl_wait`` before it reads what earlier kernels wrote or writes anything (the previous
    kernel may still read the memory), and may read what no kernel of the step writes (weights) before
    that. Eager launches keep plain stream order: there a step is bound by the host's launches, and
    PDL's gain was measured only in graph replays (H100, 2026-11-24: 8-12% per decode step). An eager
    timing that first looked 1.7-3.5x slower with PDL was host launch cost (docs/notes-decode.md)."""
    ok = _PDL.get(device)  # keyed by the argument as given (a device or its name): a per-call lookup
    if ok is None:
        dev = torch.device(device)
        ok = dev.type == "cuda" and os.environ.get("TRITON_INTERPRET") != "1"
        if ok:
            ok = sm_major(dev.index if dev.index is not None else torch.cuda.current_device()) >= 9
        _PDL[device] = ok
    return ok and os.environ.get("GATEDGEN_NO_PDL") != "1" and torch.cuda.is_current_stream_capturing()


def num_sms(device: torch.device | None = None) -> int:
    """Streaming multiprocessors of a CUDA device (cached: safe inside CUDA-graph capture)."""
    if not torch.cuda.is_available():
        return 1
    index = torch.device(device).index if device is not None else None
    index = torch.cuda.current_device() if index is None else index
    if index not in _NUM_SMS:
        _NUM_SMS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _NUM_SMS[index]


def fix_triton_interpreter_index() -> None:
    """Make the Triton interpreter accept tensor loop bounds (``range(0, i_end, BS)``) with NumPy 2.4.

    Triton 3.6's interpreter converts a scalar tensor to a Python int with ``int(data)``, where
    ``data`` has shape (1,); NumPy >= 2.4 refuses that. This wraps the interpreter's patching of
    ``tl.tensor`` so that ``__index__`` reads ``data.item()`` instead. Idempotent; no effect on
    compiled kernels.
    """
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_index_fixed", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._index_fixed = True
    interpreter._patch_lang_tensor = patched


def check_gate_cache(gc_cache: torch.Tensor, gates: torch.Tensor | None, B: int, Tmax: int, Tn: int,
                     name: str) -> int:
    """Validate a gate running-sum cache [B, Tmax, HQ] fp32 and the new tokens' gates [B, Tn, HQ]
    (called ``name`` in messages) before a cache append; returns HQ."""
    if gates is None:
        raise ValueError(f"a gated cache needs gates {name}")
    HQ = gc_cache.shape[2]
    if gc_cache.shape != (B, Tmax, HQ) or gc_cache.dtype != torch.float32 or not gc_cache.is_contiguous():
        raise ValueError("gc_cache must be contiguous fp32 [B, Tmax, HQ]")
    if gates.shape != (B, Tn, HQ):
        raise ValueError(f"{name} must be [B, Tn, HQ] = {(B, Tn, HQ)}, got {tuple(gates.shape)}")
    return HQ


# --- shared Triton helpers ----------------------------------------------------------------------

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)


def pdl_launch(use_pdl: bool) -> dict:
    """Launch options of a kernel that uses pdl_wait / pdl_release (nothing when PDL is off, so the
    CPU interpreter never sees the option)."""
    return {"launch_pdl": True} if use_pdl else {}


@triton.jit
def pdl_wait(USE_PDL: tl.constexpr):
    """Wait until the previous kernel of the stream has finished and its writes are visible."""
    if USE_PDL:
        tl.extra.cuda.gdc_wait()


@triton.jit
def pdl_release(USE_PDL: tl.constexpr):
    """Let the next kernel of the stream be scheduled now (it still waits in its own pdl_wait)."""
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def prefetch_l2(p, USE_PDL: tl.constexpr):
    """Ask for the lines at the pointers p (any shape) to be brought into L2, without waiting (under
    PDL: weights fetched while the previous kernel still runs)."""
    if USE_PDL:
        tl.inline_asm_elementwise("prefetch.global.L2 [$1]; // dummy $0", "=r,l", [p], dtype=tl.int32,
                                  is_pure=False, pack=1)


@triton.jit
def dot(a, b, DOT_PREC: tl.constexpr):
    # "upcast": the interpreter multiplies bf16 as raw integers, so it gets fp32 operands instead
    if DOT_PREC == "upcast":
        return dot_fp32(a, b)
    else:
        return tl.dot(a, b, input_precision=DOT_PREC)


@triton.jit
def dot_acc(a, b, acc, DOT_PREC: tl.constexpr):
    # acc + a @ b with the accumulator inside the MMA (no separate add of a product tile)
    if DOT_PREC == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    else:
        return tl.dot(a, b, acc, input_precision=DOT_PREC)


@triton.jit
def dot_fp32(a, b):
    return tl.dot(a.to(tl.float32), b.to(tl.float32))


@triton.jit
def tile_rows(chunk_indices, cu_seqlens, i_tile, i_b, TQ, TK, IS_VARLEN: tl.constexpr):
    """Where a parallel-attention program's tile lives: (tile index within its sequence, first query
    row, first key row, TQ, TK). Packed sequences look (sequence, tile) up in chunk_indices and take
    their bounds from cu_seqlens; dense batches offset rows by the batch index."""
    if IS_VARLEN:
        i_n = tl.load(chunk_indices + i_tile * 2).to(tl.int64)
        i_tile = tl.load(chunk_indices + i_tile * 2 + 1).to(tl.int64)
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        TQ = eos - bos
        TK = TQ
        bos_q, bos_k = bos, bos
    else:
        bos_q, bos_k = i_b * TQ, i_b * TK
    return i_tile, bos_q, bos_k, TQ, TK
