"""Skinny GEMM on the GPU (run by scripts/gpu_linear.sh): per-call time of cuBLAS F.linear and of
kernels/gemm/skinny.py at the model's (N, K) and M = 1..32; a block-size sweep at M = 1 and 32 (the
config rule's pick beside the best tried); the MLP's gate/up + SwiGLU at decode three ways (cuBLAS +
SwiGLU kernel, skinny GEMM + SwiGLU kernel, skinny GEMM with its SwiGLU epilogue: linear_swiglu);
one decode step's graph replay with GATEDGEN_NO_SKINNY=1, with the skinny GEMM but the MLP unfused
(GEMM + SwiGLU kernel, as before linear_swiglu), and as shipped. Prints tables; writes
$OUT/linear_bench.json.

Each timing is one CUDA graph of back-to-back calls on distinct weight copies (>= ~150 MB of them,
three times the H100's 50 MB L2, as in a decode step where every layer reads new weights; the small
default-model maps are capped at 256 copies and partly L2-resident, as they are in that model).
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
import torch.nn.functional as F

import kernels
from gatedgen.bench.generate import graph_replay_us
from kernels.gemm import skinny
from kernels.gemm.skinny import Config
from kernels.glu.swiglu import swiglu
from kernels.utils import cdiv, num_sms

SHAPES = [(969, 576), (576, 576), (3072, 576), (576, 1536), (49152, 576),
          (768, 256), (256, 256), (1536, 256), (256, 768), (4096, 256)]
BIG = SHAPES[:5]  # the 135M model's maps
GLU_SHAPES = [(1536, 576), (768, 256)]  # (I, K) of the gate/up maps: W [2 I, K]
MS = (1, 2, 4, 8, 16, 32)
DTYPE = torch.bfloat16
DEVICE = "cuda"


def per_call_us(calls, reps: int = 10) -> float:
    """Mean GPU time of one call, from a CUDA graph of all ``calls`` replayed ``reps`` times."""
    for c in calls[:2]:
        c()  # compile / cuBLAS handles outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for c in calls:
            c()
    graph.replay()
    torch.cuda.synchronize()
    return graph_replay_us(graph, reps) / len(calls)


def weights(N: int, K: int) -> list[torch.Tensor]:
    n = min(256, max(2, cdiv(150e6, N * K * 2)))
    return [torch.randn(N, K, device=DEVICE, dtype=DTYPE) / K**0.5 for _ in range(n)]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def bench_table() -> list[dict]:
    rows = []
    for N, K in SHAPES:
        ws = weights(N, K)
        for M in MS:
            x = torch.randn(M, K, device=DEVICE, dtype=DTYPE)
            cfg = skinny.config(M, N, K, 2, num_sms())
            err = rel_err(skinny.linear(x, ws[0]), F.linear(x.double(), ws[0].double()))
            t_cublas = per_call_us([lambda w=w, x=x: F.linear(x, w) for w in ws])
            t_ours = per_call_us([lambda w=w, x=x: skinny.linear(x, w) for w in ws])
            gbs = (N * K + M * K + M * N) * 2 / t_ours / 1e3
            rows.append(dict(N=N, K=K, M=M, cublas_us=t_cublas, ours_us=t_ours, ours_gbs=gbs,
                             speedup=t_cublas / t_ours, err=err, cfg=cfg._asdict()))
        del ws
    return rows


def bench_glu() -> list[dict]:
    """silu(x W_g^T) * (x W_u^T) per call: cuBLAS + SwiGLU kernel, skinny + SwiGLU kernel, fused epilogue."""
    rows = []
    for I, K in GLU_SHAPES:
        ws = weights(2 * I, K)
        for M in MS:
            x = torch.randn(M, K, device=DEVICE, dtype=DTYPE)
            gate, up = F.linear(x.double(), ws[0].double()).chunk(2, dim=-1)
            err = rel_err(skinny.linear_swiglu(x, ws[0], I), F.silu(gate) * up)
            t_cublas = per_call_us([lambda w=w, x=x: swiglu(*F.linear(x, w).chunk(2, dim=-1)) for w in ws])
            t_skinny = per_call_us([lambda w=w, x=x: swiglu(*skinny.linear(x, w).chunk(2, dim=-1)) for w in ws])
            t_fused = per_call_us([lambda w=w, x=x, i=I: skinny.linear_swiglu(x, w, i) for w in ws])
            rows.append(dict(I=I, K=K, M=M, cublas_swiglu_us=t_cublas, skinny_swiglu_us=t_skinny,
                             fused_us=t_fused, err=err))
            print(f"glu I={I:5d} K={K:4d} M={M:2d}: cuBLAS+swiglu {t_cublas:6.2f} us  skinny+swiglu {t_skinny:6.2f} us  "
                  f"linear_swiglu {t_fused:6.2f} us  rel err {err:.1e}", flush=True)
        del ws
    return rows


def sweep_configs(M: int, N: int, K: int) -> list[Config]:
    base = skinny.config(M, N, K, 2, num_sms())
    out = [base]
    if M == 1:  # slab height, the other K tile, split-K, the dot path
        fma = lambda BN, BK, split=1: Config(BN, BK, split, False, max(1, min(4, BN * BK // 256)))
        out += [fma(BN, base.BK) for BN in (1, 2, 4, 8, 16)]
        out += [fma(base.BN, 512 if base.BK != 512 else 128), fma(max(4, base.BN), base.BK, 2)]
        out += [Config(16, 128, 1, True, 4, 3), Config(16, 64, 4, True, 4, 3)]
    else:  # slab height x split-K, pipeline depth, warps, the other K tile
        out += [Config(BN, base.BK, split, True, 4, 3) for BN in (16, 32, 64) for split in (1, 2)]
        out += [base._replace(num_stages=2), base._replace(num_stages=4), base._replace(num_warps=8),
                base._replace(BK=64 if base.BK != 64 else 128)]
    seen, uniq = set(), []
    for c in out:
        if c not in seen:
            seen.add(c)
            uniq.append(c)
    return uniq


def sweep(deadline: float) -> list[dict]:
    rows = []
    for M in (1, 32):
        for N, K in BIG:
            ws = weights(N, K)
            x = torch.randn(M, K, device=DEVICE, dtype=DTYPE)
            ref = F.linear(x.double(), ws[0].double())
            results = []
            for cfg in sweep_configs(M, N, K):
                if time.time() > deadline:
                    break
                try:
                    err = rel_err(skinny.run(x, ws[0], None, cfg), ref)
                    t = per_call_us([lambda w=w, x=x, c=cfg: skinny.run(x, w, None, c) for w in ws], reps=5)
                except Exception as e:  # a config the compiler refuses: reported, not fatal
                    print(f"  sweep M={M} ({N},{K}) {cfg}: {e.__class__.__name__}: {str(e)[:120]}")
                    continue
                results.append((t, err, cfg))
            del ws
            if not results:
                continue
            default_t = results[0][0]
            t, err, cfg = min(results, key=lambda r: r[0])
            bad = [r for r in results if r[1] > 2e-2]
            rows.append(dict(M=M, N=N, K=K, default_us=default_t, best_us=t, best_cfg=cfg._asdict(),
                             tried=len(results), bad=len(bad)))
            print(f"sweep M={M:2d} ({N:5d},{K:4d}): rule {default_t:7.2f} us {tuple(results[0][2])}  "
                  f"best {t:7.2f} us {tuple(cfg)}  ({len(results)} tried, {len(bad)} wrong)", flush=True)
    return rows


def _unfused_linear_swiglu(x, weight, inter, bias=None):
    """The MLP as before linear_swiglu: one gate/up GEMM, then the SwiGLU kernel."""
    return kernels.swiglu(*kernels.linear(x, weight, bias).split(inter, dim=-1))


def replay_step(name: str, B: int, skinny_on: bool, fused_glu: bool = True) -> float:
    from gatedgen.bench.generate import PRESETS, random_model, replay_step_us

    os.environ["GATEDGEN_NO_SKINNY"] = "0" if skinny_on else "1"
    real_glu = kernels.linear_swiglu
    if not fused_glu:
        kernels.linear_swiglu = _unfused_linear_swiglu
    try:
        return replay_step_us(random_model(PRESETS[name], "cuda", DTYPE), B)
    finally:
        os.environ.pop("GATEDGEN_NO_SKINNY")
        kernels.linear_swiglu = real_glu


def main() -> None:
    out = os.environ.get("OUT", "out")
    res: dict = {}
    x = torch.randn(8192, 8192, device=DEVICE, dtype=DTYPE)
    t0 = time.time()
    while time.time() - t0 < 2:  # bring the clocks up
        x @ x
    torch.cuda.synchronize()
    del x

    rows = res["table"] = bench_table()
    print(f"\n{'N':>6} {'K':>5} {'M':>3} {'cuBLAS us':>10} {'ours us':>8} {'ours GB/s':>9} {'speedup':>7} {'rel err':>8}  config")
    for r in rows:
        c = r["cfg"]
        print(f"{r['N']:6d} {r['K']:5d} {r['M']:3d} {r['cublas_us']:10.2f} {r['ours_us']:8.2f} {r['ours_gbs']:9.0f} "
              f"{r['speedup']:7.2f} {r['err']:8.1e}  BN={c['BN']} BK={c['BK']} S={c['SPLIT_K']} "
              f"{'dot' if c['USE_DOT'] else 'fma'} w={c['num_warps']}", flush=True)

    print()
    glu = res["glu"] = bench_glu()

    if os.environ.get("SKIP_SWEEP", "0") != "1":
        print()
        res["sweep"] = sweep(time.time() + float(os.environ.get("SWEEP_SECONDS", "60")))

    e2e = res["replay"] = []
    for B in (1, 32):
        for mode, on, fused in (("cublas", False, True), ("skinny", True, False), ("skinny+glu", True, True)):
            us = replay_step("135m", B, on, fused)
            e2e.append(dict(config="135m", B=B, mode=mode, us=us))
            torch.cuda.empty_cache()
    with open(os.path.join(out, "linear_bench.json"), "w") as f:
        json.dump(res, f, indent=1)

    # the short summary, last
    print("\nper-layer maps of the 135M model + LM head, one call (us), cuBLAS -> ours:")
    for M in (1, 32):
        sel = [r for r in rows if r["M"] == M and (r["N"], r["K"]) in BIG]
        tot_c, tot_o = sum(r["cublas_us"] for r in sel[:4]) * 30 + sel[4]["cublas_us"], \
            sum(r["ours_us"] for r in sel[:4]) * 30 + sel[4]["ours_us"]
        print(f"  M={M:2d}: " + "  ".join(f"({r['N']},{r['K']}) {r['cublas_us']:.1f}->{r['ours_us']:.1f}" for r in sel)
              + f"  | 30 layers + head: {tot_c:.0f} -> {tot_o:.0f} us")
    print("MLP gate/up + SwiGLU, one call (us): cuBLAS+swiglu / skinny+swiglu / linear_swiglu (fused epilogue):")
    for M in (1, 32):
        print(f"  M={M:2d}: " + "  ".join(f"I={r['I']} K={r['K']}: {r['cublas_swiglu_us']:.1f} / {r['skinny_swiglu_us']:.1f}"
                                         f" / {r['fused_us']:.1f} (err {r['err']:.0e})" for r in glu if r["M"] == M))
    print("decode step replay, 135m bf16, context 192 (us/step, tok/s):")
    for B in (1, 32):
        us = {r["mode"]: r["us"] for r in e2e if r["B"] == B}
        print(f"  B={B:2d}: " + "   ".join(f"{k} {v:6.0f} us ({B * 1e6 / v:7.0f} tok/s)" for k, v in us.items())
              + f"   glu epilogue saves {us['skinny'] - us['skinny+glu']:.0f} us/step")


if __name__ == "__main__":
    sys.exit(main())
