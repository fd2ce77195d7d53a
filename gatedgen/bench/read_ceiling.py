"""Same-bytes read ceiling of the decode benchmark (gatedgen/bench/kernels_decode.py).

A decode step must read the whole K and V cache once: 2*N*T*H*D*2 bytes for bf16 [N, T, H, D]. The
ceiling of a shape is the fastest time in which a plain reader, doing no attention at all, reads those
same bytes under exactly the timing of our "graph" column (``_bench(_graph(fn))``: the launch captured
in a CUDA graph and replayed, triton do_bench median, L2 cleared between repetitions):

* ``read_kernel`` (Triton) sums two bf16 tensors of the cache's shape into one fp32 partial per
  program (stored, so the loads cannot be dropped). ``loop="stride"``: a fixed grid of
  programs_per_sm x SMs programs, program p reading chunks p, p + P, p + 2P, ... of BLOCK elements of
  both tensors; ``loop="range"``: the same grid, each program a contiguous run of chunks;
  ``loop="none"``: one program per chunk (grid = cdiv(numel, BLOCK)), no loop.
* ``torch.sum`` (fp32) of K and of V, the two reductions replayed from one graph.

The ceiling is the best of these (``READ_VARIANTS`` x launch options, plus torch.sum); the floor is an
empty Triton kernel replayed the same way, i.e. what graph launch and event timing alone cost, which
every graph-timed number includes.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from kernels.utils import cdiv, fix_triton_interpreter_index, num_sms

if os.environ.get("TRITON_INTERPRET") == "1":
    fix_triton_interpreter_index()

LOOPS = {"none": 0, "stride": 1, "range": 2}

# name -> keyword arguments of read_sum (the sweep keeps the fastest per shape). Compiled for sm_90 (Triton
# 3.6, ptxas -v) the loads are 16 bytes wide; the loop variants take 56-64 registers (128 at BLOCK 16384),
# the one-chunk ones ~34, no spills. The loads feed no dot, so the pipeliner leaves them alone and
# num_stages changes nothing there: latency is hidden by the programs per SM instead.
READ_VARIANTS = {
    "stride-b8k-w8-pps2": {"loop": "stride", "block": 8192, "num_warps": 8, "num_stages": 3,
                           "programs_per_sm": 2},
    "stride-b8k-w8-pps4": {"loop": "stride", "block": 8192, "num_warps": 8, "num_stages": 3,
                           "programs_per_sm": 4},
    "stride-b4k-w4-pps4": {"loop": "stride", "block": 4096, "num_warps": 4, "num_stages": 4,
                           "programs_per_sm": 4},
    "stride-b16k-w8-pps1": {"loop": "stride", "block": 16384, "num_warps": 8, "num_stages": 3,
                            "programs_per_sm": 1},
    "range-b8k-w8-pps2": {"loop": "range", "block": 8192, "num_warps": 8, "num_stages": 3,
                          "programs_per_sm": 2},
    "chunk-b4k-w4": {"loop": "none", "block": 4096, "num_warps": 4},
    "chunk-b8k-w8": {"loop": "none", "block": 8192, "num_warps": 8},
    "chunk-b16k-w8": {"loop": "none", "block": 16384, "num_warps": 8},
}


@triton.jit
def _read_chunk(x, y, i_c, numel, b_s, BLOCK: tl.constexpr, EVEN: tl.constexpr):
    """b_s + the i_c-th BLOCK elements of x and of y, in fp32."""
    o_x = i_c * BLOCK + tl.arange(0, BLOCK)
    p_x, p_y = x + o_x, y + o_x
    if EVEN:
        b_x = tl.load(p_x)
        b_y = tl.load(p_y)
    else:
        m_x = o_x < numel
        b_x = tl.load(p_x, mask=m_x, other=0.0)
        b_y = tl.load(p_y, mask=m_x, other=0.0)
    return b_s + b_x.to(tl.float32) + b_y.to(tl.float32)


@triton.jit
def read_kernel(x, y, partial, numel, num_chunks,
                LOOP: tl.constexpr, BLOCK: tl.constexpr, EVEN: tl.constexpr):
    """partial[p] = sum of x and y (same numel, contiguous) over program p's chunks of BLOCK elements.
    LOOP 0: chunk p; 1: chunks p, p + P, ... (P programs); 2: chunks [p * C // P, (p + 1) * C // P)."""
    i_p = tl.program_id(0)
    b_s = tl.zeros([BLOCK], dtype=tl.float32)
    if LOOP == 0:
        b_s = _read_chunk(x, y, i_p, numel, b_s, BLOCK, EVEN)
    elif LOOP == 1:
        for i_c in range(i_p, num_chunks, tl.num_programs(0)):
            b_s = _read_chunk(x, y, i_c, numel, b_s, BLOCK, EVEN)
    else:
        n_p = tl.num_programs(0)
        for i_c in range(i_p * num_chunks // n_p, (i_p + 1) * num_chunks // n_p):
            b_s = _read_chunk(x, y, i_c, numel, b_s, BLOCK, EVEN)
    tl.store(partial + i_p, tl.sum(b_s, 0))


@triton.jit
def empty_kernel():
    """Does nothing: its graph-replayed time is the harness floor."""
    pass


def num_programs(numel: int, loop: str = "stride", block: int = 8192, programs_per_sm: int = 2,
                 device=None) -> int:
    """Grid size of read_sum (the number of fp32 partials it writes)."""
    chunks = cdiv(numel, block)
    return chunks if loop == "none" else max(1, min(chunks, programs_per_sm * num_sms(device)))


def read_sum(x: torch.Tensor, y: torch.Tensor, partial: torch.Tensor | None = None, *,
             loop: str = "stride", block: int = 8192, programs_per_sm: int = 2, num_warps: int = 8,
             num_stages: int = 3) -> torch.Tensor:
    """Read x and y (same shape, contiguous) once with read_kernel; returns the fp32 partials
    [num_programs] (written into ``partial``'s first elements when given); their sum is x.sum() + y.sum()."""
    if x.shape != y.shape or not (x.is_contiguous() and y.is_contiguous()):
        raise ValueError("x and y must be contiguous tensors of one shape")
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {sorted(LOOPS)}, got {loop!r}")
    numel = x.numel()
    if numel + block >= 2**31:  # int32 offsets
        raise ValueError("read_sum takes fewer than 2**31 - block elements")
    grid = num_programs(numel, loop, block, programs_per_sm, x.device)
    if partial is None:
        partial = torch.empty(grid, dtype=torch.float32, device=x.device)
    if partial.dtype != torch.float32 or partial.numel() < grid:
        raise ValueError(f"partial must be fp32 with at least {grid} elements")
    read_kernel[(grid,)](x, y, partial, numel, cdiv(numel, block), LOOP=LOOPS[loop], BLOCK=block,
                         EVEN=numel % block == 0, num_warps=num_warps, num_stages=num_stages)
    return partial[:grid]


def read_ceiling(N: int, T: int, variants: dict | None = None, kv=None) -> dict:
    """Graph-replayed read time of K and V [N, T, H, D] bf16 (``kv``, or fresh random ones) per reader.

    Returns N, T; ceil_us (the best time), ceil_tbps (its K+V TB/s), ceil_variant (the reader that won),
    variant_us (every reader's time, torch.sum included), floor_us (an empty kernel, same timing) and
    sum_err (largest relative difference of a Triton reader's total from torch's fp64 sum).
    """
    from gatedgen.bench.kernels_decode import D, H, _bench, _graph, _tbps

    variants = READ_VARIANTS if variants is None else variants
    if kv is None:
        gen = torch.Generator(device="cuda").manual_seed(0)
        kv = [torch.randn(N, T, H, D, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(2)]
    k, v = kv
    ref = k.double().sum().item() + v.double().sum().item()
    scale = k.float().abs().sum().item() + v.float().abs().sum().item()
    times, err = {}, 0.0
    for name, kw in variants.items():
        partial = read_sum(k, v, **kw)  # allocates the partials (and compiles) outside the graph
        fn = functools.partial(read_sum, k, v, partial, **kw)
        err = max(err, abs(fn().double().sum().item() - ref) / scale)
        times[name] = _bench(_graph(fn)) * 1e3
        del fn, partial

    def torch_sum():
        return k.sum(dtype=torch.float32), v.sum(dtype=torch.float32)

    times["torch.sum"] = _bench(_graph(torch_sum)) * 1e3
    floor_us = _bench(_graph(lambda: empty_kernel[(1,)]())) * 1e3
    best = min(times, key=times.get)
    return {"N": N, "T": T, "ceil_us": times[best], "ceil_tbps": _tbps(N, T, times[best]),
            "ceil_variant": best, "variant_us": times, "floor_us": floor_us, "sum_err": err}


def format_ceiling(rows: list[dict]) -> str:
    """Markdown table of read_ceiling rows: every reader's us, the best (TB/s), and the empty-launch floor."""
    from gatedgen.bench.kernels_decode import D, H, _tbps

    names = list(rows[0]["variant_us"])
    lines = [
        "| N x T | MB K+V | " + " | ".join(f"{n} us" for n in names)
        + " | ceiling us / TB/s | best | floor us | TB/s net of floor | sum err |",
        "|---|---|" + "---|" * (len(names) + 5),
    ]
    for r in rows:
        N, T, us, floor = r["N"], r["T"], r["ceil_us"], r["floor_us"]
        net = f"{_tbps(N, T, us - floor):.2f}" if us > floor else "—"
        lines.append(
            f"| {N} x {T} | {2 * N * T * H * D * 2 / 1e6:.0f} | "
            + " | ".join(f"{r['variant_us'].get(n, float('nan')):.1f}" for n in names)
            + f" | {us:.1f} / {r['ceil_tbps']:.2f} | {r['ceil_variant']} | {floor:.1f} | {net} "
            f"| {r['sum_err']:.1e} |"
        )
    return "\n".join(lines)
