"""Block configurations of the parallel attention kernels: fixed per-head-dim blocks measured on an
H100, and the autotuner behind GATEDGEN_AUTOTUNE=1."""

from __future__ import annotations

import functools
import os

import triton

from kernels.attn.parallel_bwd import parallel_attn_bwd_kernel_dkdv, parallel_attn_bwd_kernel_dq
from kernels.attn.parallel_fwd import parallel_attn_fwd_kernel

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


# ----------------------------------------------------------------------------------------------
# block configurations
# ----------------------------------------------------------------------------------------------


# Autotuner candidates per kernel: (BT, BS, num_warps, num_stages).
# dkdv: BS = key tile of the program, BT = query block of the inner loop.
# dq:   BT = query tile of the program, BS = key block of the inner loop.
_CANDIDATES = {
    "fwd": [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (128, 32, 4, 4), (64, 64, 4, 3), (64, 32, 4, 3)],
    "dkdv": [(32, 128, 8, 2), (64, 128, 8, 2), (32, 64, 4, 3), (64, 64, 4, 3), (16, 64, 4, 3)],
    "dq": [(128, 32, 8, 2), (128, 64, 8, 2), (64, 32, 4, 3), (64, 64, 4, 3), (64, 16, 4, 3)],
}
# The one block per kernel under the CPU interpreter (small and fast).
_BLOCKS_INTERPRET = {"fwd": (32, 16, 4, 1), "fwd_ungated": (32, 16, 4, 1), "fwd_long": (32, 16, 4, 1),
                     "dkdv": (16, 32, 4, 1), "dkdv_gqa": (16, 32, 4, 1), "dq": (32, 16, 4, 1),
                     "dq_fp32": (32, 16, 4, 1)}


def _configs(kind: str) -> list[triton.Config]:
    candidates = [_BLOCKS_INTERPRET[kind]] if _INTERPRET else _CANDIDATES[kind]
    return [triton.Config({"BT": bt, "BS": bs}, num_warps=w, num_stages=st) for bt, bs, w, st in candidates]


def _fits(cfg: triton.Config, BK: int, n_acc: int) -> bool:
    # skip tiles whose fp32 accumulators alone would exceed ~128 registers per thread
    tile = max(cfg.kwargs["BT"], cfg.kwargs["BS"]) if n_acc == 2 else cfg.kwargs["BT"]
    return tile * BK * n_acc <= 128 * 32 * cfg.num_warps


def _prune(n_acc: int):
    def prune(configs, named_args, **kwargs):
        BK = named_args.get("BK", kwargs.get("BK"))
        kept = [c for c in configs if _fits(c, BK, n_acc)]
        return kept or configs[-1:]

    return prune


_fwd_tuned = triton.autotune(
    configs=_configs("fwd"), key=["BK", "G", "USE_G", "DOT_PREC"], prune_configs_by={"early_config_prune": _prune(1)}
)(parallel_attn_fwd_kernel)
_dkdv_tuned = triton.autotune(
    configs=_configs("dkdv"), key=["BK", "G", "USE_G", "DOT_PREC"], prune_configs_by={"early_config_prune": _prune(2)}
)(parallel_attn_bwd_kernel_dkdv)
_dq_tuned = triton.autotune(
    configs=_configs("dq"), key=["BK", "G", "USE_G", "DOT_PREC"], prune_configs_by={"early_config_prune": _prune(1)}
)(parallel_attn_bwd_kernel_dq)

# Blocks per (kernel, padded head dim, gated): the winners of the autotuner above on an H100 at the
# peers' shapes (T = 1k..16k, bf16). Set GATEDGEN_AUTOTUNE=1 to tune again (dense batches only: for
# packed batches the tile list depends on the tile size).
_AUTOTUNE = os.environ.get("GATEDGEN_AUTOTUNE") == "1" and not _INTERPRET
_BLOCKS = {
    # kind: {BK: (BT, BS, num_warps, num_stages[, maxnreg])}; "fwd" is the gated forward. Since the TMA K/V loads
    # (2026-11-24 sweep, scripts/gpu_fwd_sweep.py) the ungated forward at D=128 is fastest with 128-key
    # blocks and 8 warps (465-561 vs 407-447 TFLOP/s at T=4k-16k), the gated one with (128, 32, 4, 4).
    "fwd": {64: (128, 64, 4, 3), 128: (128, 32, 4, 4), 256: (64, 32, 4, 3)},
    "fwd_ungated": {64: (128, 64, 4, 3), 128: (128, 128, 8, 3), 256: (64, 32, 4, 3)},
    # gated 16-bit dense batches with Tk >= parallel._LONG_TK: at D=128 the 128-key blocks overtake the
    # 32-key ones at long sequences (T=16k: 459 vs 416 TFLOP/s; T=4k: 338 vs 358; 2026-11-24 sweep)
    "fwd_long": {64: (128, 64, 4, 3), 128: (128, 128, 8, 3), 256: (64, 32, 4, 3)},
    # Backward since the per-head rows and TMA loads (2026-11-24 sweep, scripts/gpu_bwd_sweep.py, gated
    # fwd+bwd at D=128): dk/dv with 32-query blocks was 13-18% faster at T=4k-16k without GQA, but 11%
    # slower with G = 4 query heads per program (more spills), which keeps 16; dq with 3 stages +3-5%.
    "dkdv": {64: (32, 64, 4, 3), 128: (32, 64, 4, 3), 256: (16, 32, 8, 2)},
    "dkdv_gqa": {64: (32, 64, 4, 3), 128: (16, 64, 4, 3), 256: (16, 32, 8, 2)},
    "dq": {64: (64, 32, 4, 3), 128: (128, 64, 8, 3), 256: (64, 32, 8, 2)},
    # fp32 inputs: 3 stages of 64x128 fp32 k and v beside the 128-row q/do tiles overflow shared memory
    "dq_fp32": {64: (64, 32, 4, 3), 128: (128, 64, 8, 2), 256: (64, 32, 8, 2)},
}


@functools.cache
def _blocks(kind: str, BK: int) -> dict:
    """Launch options {BT, BS, num_warps, num_stages[, maxnreg]} of a kernel at a padded head dim: one
    cached dict per shape class (callers unpack it, never modify it). A fifth tuple element caps the
    registers per thread (maxnreg), e.g. so that two programs fit on one SM."""
    if _INTERPRET:
        blocks = _BLOCKS_INTERPRET[kind]
    else:
        blocks = _BLOCKS[kind][max(BK, 64)]
    bt, bs, w, st = blocks[:4]
    cfg = {"BT": bt, "BS": bs, "num_warps": w, "num_stages": st}
    if len(blocks) > 4:
        cfg["maxnreg"] = blocks[4]
    return cfg
