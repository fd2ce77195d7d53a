"""Prefill / training attention benchmark: our Triton kernel next to fla and torch SDPA.

Shapes and FLOP convention as docs/peers (FlashAttention's): causal forward = 2*B*H*T^2*D (half of
4*B*H*T^2*D), forward+backward = 3.5 x forward; B = 16384 / T; bf16; g = logsigmoid(randn + 4)
fp32. Varlen rows count sum over sequences of 2*H*len^2*D. Times are triton.testing.do_bench
medians. Run: ``python -m gatedgen.bench.kernels_prefill [--quick] [--graphs]``.

``--graphs`` adds a forward-only table timed from CUDA-graph replays (``do_bench_cudagraph``, no
autograd) for every contender alike: the GPU's time without the host's launch cost. At T = 1k an eager
call's host work (our gated call with autograd inputs: about 90 us on the H100 machine's CPU, two
prepared launches; SDPA: about 35 us) comes close to the L2 flush that do_bench runs before each call,
and past it the GPU waits for the host: that time varies with the machine's CPU.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

# (name, B, T, HQ, H, D, varlen lengths or None)
SHAPES = [
    ("16x128", 16, 1024, 16, 16, 128, None),
    ("16x128", 4, 4096, 16, 16, 128, None),
    ("16x128", 1, 16384, 16, 16, 128, None),
    ("32x64", 16, 1024, 32, 32, 64, None),
    ("32x64", 4, 4096, 32, 32, 64, None),
    ("32x64", 1, 16384, 32, 32, 64, None),
    ("gqa32:8x128", 4, 4096, 32, 8, 128, None),
    ("varlen16x128", 1, 16384, 16, 16, 128, [3000, 17, 5000, 1, 2048, 4000, 2318]),
]


def _fla():
    try:
        from fla.ops.attn.parallel import parallel_attn as fla_attn
    except Exception:  # noqa: BLE001 - fla is optional
        return None
    return fla_attn


def _bench(fn) -> float:
    import triton

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def _bench_graph(fn) -> float:
    import triton

    with torch.no_grad():
        return triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")


def _fwd_bwd(fn, inputs, do):
    def run():
        out = fn()
        torch.autograd.grad(out, inputs, do)

    return run


def _flops(B, T, HQ, D, lens) -> float:
    if lens is None:
        return 2.0 * B * HQ * T * T * D
    return sum(2.0 * HQ * n * n * D for n in lens)


def _warm_gpu(seconds: float = 1.0) -> None:
    """Matmuls for about ``seconds`` before the first shape, so that it is not timed at ramping clocks.
    The first row of a process has read 10-40% low before (H100, 2026-11-24); with this warm-up it read
    normal in one run and low again in the next (16x128 T=1k gated 232 vs 131 TFLOP/s), so clocks are not
    the whole cause: ``run`` also times its first shape twice and keeps the second."""
    import time

    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    t = time.perf_counter()
    while time.perf_counter() - t < seconds:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()


def run_graphs(quick: bool = False, log=None, only: list[str] | None = None) -> list[dict]:
    """Forward TFLOP/s from CUDA-graph replays (no autograd) of ours, fla and SDPA, one dict per dense
    shape (the packed batch is left out: fla's varlen path reads its offsets on the host, which a
    capture refuses); the keys of ``run``'s forward columns."""
    from kernels.attn.parallel import parallel_attn

    fla_attn = _fla()
    rows = []
    _warm_gpu()
    for name, B, T, HQ, H, D, lens in _shapes(quick, only):
        if lens is not None:
            continue
        torch.manual_seed(0)
        q, k, v = (torch.randn(B, T, n, D, device="cuda", dtype=torch.bfloat16) for n in (HQ, H, H))
        g = F.logsigmoid(torch.randn(B, T, HQ, device="cuda") + 4)
        fl = _flops(B, T, HQ, D, None)
        row = {"shape": name, "T": T, "B": B, "HQ": HQ, "H": H, "D": D}
        for key, gate in (("ours_g_fwd", g), ("ours_fwd", None)):
            row[key] = fl / _bench_graph(lambda gate=gate: parallel_attn(q, k, v, gate)) / 1e9
        if fla_attn is not None:
            for key, gate in (("fla_g_fwd", g), ("fla_fwd", None)):
                row[key] = fl / _bench_graph(lambda gate=gate: fla_attn(q, k, v, g=gate)) / 1e9
        qs, ks, vs = (x.transpose(1, 2).contiguous() for x in (q, k, v))
        row["sdpa_fwd"] = fl / _bench_graph(
            lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=HQ != H)) / 1e9
        rows.append(row)
        if log is not None:
            log(row)
    return rows


def _shapes(quick: bool, only: list[str] | None) -> list[tuple]:
    shapes = SHAPES[1::3] if quick else SHAPES
    return [s for s in shapes if s[0] in only] if only else shapes


def _cu_seqlens(lens):
    if lens is None:
        return None
    return torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), device="cuda", dtype=torch.int32)


def run(quick: bool = False, log=None, only: list[str] | None = None) -> list[dict]:
    """One dict per shape with TFLOP/s of each variant (None where a peer is missing).

    The first shape is timed twice and its first pass dropped (a warm-up of every contender alike): the
    first timed row of a process has read low for our eager forwards alone, e.g. 16x128 T=1k gated 208
    against 368 from graphs in the same call (H100, 2026-11-24), after ``_warm_gpu``'s clock warm-up.
    ``log``, when given, is called with each finished row (for progress on long runs)."""
    fla_attn = _fla()
    rows = []
    _warm_gpu()
    for i, shape in enumerate(_shapes(quick, only)):
        if i == 0:
            _row(fla_attn, *shape)
        row = _row(fla_attn, *shape)
        rows.append(row)
        if log is not None:
            log(row)
    return rows


def _row(fla_attn, name, B, T, HQ, H, D, lens) -> dict:
    """``run``'s measurements of one shape."""
    from kernels.attn.parallel import parallel_attn

    dev = "cuda"
    torch.manual_seed(0)
    dt = torch.bfloat16
    q = torch.randn(B, T, HQ, D, device=dev, dtype=dt, requires_grad=True)
    k = torch.randn(B, T, H, D, device=dev, dtype=dt, requires_grad=True)
    v = torch.randn(B, T, H, D, device=dev, dtype=dt, requires_grad=True)
    g = F.logsigmoid(torch.randn(B, T, HQ, device=dev) + 4).requires_grad_(True)
    do = torch.randn(B, T, HQ, D, device=dev, dtype=dt)
    assert lens is None or sum(lens) == T
    cu = _cu_seqlens(lens)
    fl = _flops(B, T, HQ, D, lens)
    row = {"shape": name, "T": T, "B": B, "HQ": HQ, "H": H, "D": D}

    def tflops(ms, mult=1.0):
        return None if ms is None else fl * mult / ms / 1e9

    def ours(gate):
        return lambda: parallel_attn(q, k, v, gate, cu_seqlens=cu)

    row["ours_g_fwd"] = tflops(_bench(ours(g)))
    row["ours_g_fwdbwd"] = tflops(_bench(_fwd_bwd(ours(g), (q, k, v, g), do)), 3.5)
    row["ours_fwd"] = tflops(_bench(ours(None)))
    row["ours_fwdbwd"] = tflops(_bench(_fwd_bwd(ours(None), (q, k, v), do)), 3.5)
    if fla_attn is not None:
        cu_l = cu.long() if cu is not None else None

        def fla(gate):
            return lambda: fla_attn(q, k, v, g=gate, cu_seqlens=cu_l)

        row["fla_g_fwd"] = tflops(_bench(fla(g)))
        row["fla_g_fwdbwd"] = tflops(_bench(_fwd_bwd(fla(g), (q, k, v, g), do)), 3.5)
        row["fla_fwd"] = tflops(_bench(fla(None)))
    if lens is None:
        # SDPA in its own layout [B, H, T, D]; GQA through enable_gqa
        qs = q.detach().transpose(1, 2).contiguous().requires_grad_(True)
        ks = k.detach().transpose(1, 2).contiguous().requires_grad_(True)
        vs = v.detach().transpose(1, 2).contiguous().requires_grad_(True)
        dos = do.transpose(1, 2).contiguous()

        def sdpa():
            return F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=HQ != H)

        row["sdpa_fwd"] = tflops(_bench(sdpa))
        row["sdpa_fwdbwd"] = tflops(_bench(_fwd_bwd(sdpa, (qs, ks, vs), dos)), 3.5)
    del q, k, v, g, do
    torch.cuda.empty_cache()
    return row


def _ratio(a, b) -> str:
    if a is None or b is None or b == 0 or math.isnan(b):
        return "-"
    return f"{a / b:.2f}"


def _num(x) -> str:
    return "-" if x is None else f"{x:.0f}"


def _markdown(rows: list[dict], cols: list[tuple[str, str]], ratios: list[tuple[str, str, str]]) -> str:
    """A markdown table: shape and T, the TFLOP/s columns (header, key), then the ratios (header,
    numerator key, denominator key)."""
    head = ["H x D", "T"] + [c for c, _ in cols] + [c for c, _, _ in ratios]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["shape"], str(r["T"])] + [_num(r.get(k)) for _, k in cols]
        cells += [_ratio(r.get(a), r.get(b)) for _, a, b in ratios]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


_FWD_RATIOS = [("g fwd/fla", "ours_g_fwd", "fla_g_fwd"), ("g fwd/SDPA", "ours_g_fwd", "sdpa_fwd"),
               ("fwd/SDPA", "ours_fwd", "sdpa_fwd")]


def format_graph_table(rows: list[dict]) -> str:
    """The forward-only table of ``run_graphs``."""
    cols = [("ours g fwd", "ours_g_fwd"), ("fla g fwd", "fla_g_fwd"), ("ours fwd", "ours_fwd"),
            ("fla fwd", "fla_fwd"), ("SDPA fwd", "sdpa_fwd")]
    return _markdown(rows, cols, _FWD_RATIOS)


def format_table(rows: list[dict]) -> str:
    cols = [
        ("ours g fwd", "ours_g_fwd"),
        ("fla g fwd", "fla_g_fwd"),
        ("ours g f+b", "ours_g_fwdbwd"),
        ("fla g f+b", "fla_g_fwdbwd"),
        ("ours fwd", "ours_fwd"),
        ("ours f+b", "ours_fwdbwd"),
        ("fla fwd", "fla_fwd"),
        ("SDPA fwd", "sdpa_fwd"),
        ("SDPA f+b", "sdpa_fwdbwd"),
    ]
    ratios = _FWD_RATIOS[:1] + [("g f+b/fla", "ours_g_fwdbwd", "fla_g_fwdbwd")] + _FWD_RATIOS[1:]
    return _markdown(rows, cols, ratios)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one T per head layout")
    parser.add_argument("--only", default="", help="comma-separated shape names (e.g. 16x128,gqa32:8x128)")
    parser.add_argument("--graphs", action="store_true", help="also the forward from CUDA-graph replays")
    parser.add_argument("--graphs-only", action="store_true", help="only the forward from CUDA-graph replays")
    args = parser.parse_args(argv)
    only = [s for s in args.only.split(",") if s] or None
    if not args.graphs_only:
        print("TFLOP/s (bf16, causal; fwd+bwd = 3.5 x fwd FLOPs); ratios ours/peer")
        print(format_table(run(quick=args.quick, log=lambda r: print(r, flush=True), only=only)))
    if args.graphs or args.graphs_only:
        print("forward TFLOP/s from CUDA-graph replays (no autograd, host launch cost excluded for all)")
        print(format_graph_table(run_graphs(quick=args.quick, log=lambda r: print(r, flush=True), only=only)))


if __name__ == "__main__":
    main()
