"""RMSNorm folded into the skinny GEMM (run by scripts/gpu_normlinear.sh): per-call time of the two kernels
it replaces (Triton RMSNorm + residual, then the skinny GEMM / linear_swiglu) and of the one fused kernel
(kernels.gemm.skinny.rms_norm_linear) at the 135M model's normed maps (q/k/v/f 969 x 576, gate/up
2 x 1536 x 576, LM head 49152 x 576) and M = 1, 8, 32; then one decode step's graph replay
(gatedgen.bench.generate.replay_step_us, 135m / 135m-llama, B = 1 and 32) with GATEDGEN_NO_NORM_FOLD=1
(norm kernels) and without (norms folded into the GEMMs). Prints tables (the step table last); writes
$OUT/normlinear_bench.json.
"""

from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from gpu_linear_bench import per_call_us, rel_err, weights

from gatedgen.bench.generate import PRESETS, random_model, replay_step_us
from kernels.gemm import naive, skinny
from kernels.norm.rmsnorm import rms_norm

DTYPE, DEVICE, EPS = torch.bfloat16, "cuda", 1e-5
MAPS = [("qkvf", 969, None), ("gate/up", 2 * 1536, 1536), ("lm_head", 49152, None)]  # (name, rows of W, inter)


def _two_kernels(x, g, w, r, inter):
    """What the fold replaces: the Triton RMSNorm (+ residual), then the skinny GEMM (SwiGLU epilogue)."""
    n, _ = rms_norm(x, g, EPS, r)
    return skinny.linear(n, w) if inter is None else skinny.linear_swiglu(n, w, inter)


def bench_calls() -> list[dict]:
    rows, K = [], 576
    g = (1 + 0.1 * torch.randn(K, device=DEVICE)).to(DTYPE)
    for name, N, inter in MAPS:
        ws = weights(N, K)
        for M in (1, 8, 32):
            x, r = (torch.randn(M, K, device=DEVICE, dtype=DTYPE) for _ in range(2))
            ref = naive.rms_norm_linear(x.double(), g.double(), EPS, ws[0].double(), None, r.double(), inter)[0]
            err = rel_err(skinny.rms_norm_linear(x, g, EPS, ws[0], None, r, inter)[0], ref)
            t_two = per_call_us([lambda w=w, x=x, r=r, i=inter: _two_kernels(x, g, w, r, i) for w in ws])
            t_one = per_call_us([lambda w=w, x=x, r=r, i=inter: skinny.rms_norm_linear(x, g, EPS, w, None, r, i)
                                 for w in ws])
            rows.append({"map": name, "N": N, "M": M, "two_kernels_us": t_two, "fused_us": t_one, "err": err})
            print(f"{name:8s} M={M:2d}: rms_norm + GEMM {t_two:6.2f} us   rms_norm_linear {t_one:6.2f} us   "
                  f"rel err vs fp64 {err:.1e}", flush=True)
        del ws
    return rows


def bench_steps() -> list[dict]:
    rows = []
    for name in ("135m", "135m-llama"):
        model = random_model(PRESETS[name], DEVICE, DTYPE)
        for B in (1, 32):
            t = {}
            for fold in ("0", "1"):
                os.environ["GATEDGEN_NO_NORM_FOLD"] = fold
                t[fold] = replay_step_us(model, B)
            os.environ.pop("GATEDGEN_NO_NORM_FOLD")
            rows.append({"config": name, "B": B, "no_fold_us": t["1"], "fold_us": t["0"]})
            print(f"step {name} B={B}: no fold {t['1']:.0f} us, fold {t['0']:.0f} us", flush=True)
        del model
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    calls = bench_calls()
    steps = bench_steps()
    out = os.environ.get("OUT", "out")
    with open(os.path.join(out, "normlinear_bench.json"), "w") as f:
        json.dump({"calls": calls, "steps": steps}, f, indent=1)
    print("\n| map | M | rms_norm + GEMM us | rms_norm_linear us | saved us | rel err |")
    print("|---|---|---|---|---|---|")
    for r in calls:
        print(f"| {r['map']} | {r['M']} | {r['two_kernels_us']:.2f} | {r['fused_us']:.2f} | "
              f"{r['two_kernels_us'] - r['fused_us']:.2f} | {r['err']:.1e} |")
    print("\n| config | B | step us, GATEDGEN_NO_NORM_FOLD=1 | step us, fold | saved us | tok/s (fold) |")
    print("|---|---|---|---|---|---|")
    for r in steps:
        print(f"| {r['config']} | {r['B']} | {r['no_fold_us']:.0f} | {r['fold_us']:.0f} | "
              f"{r['no_fold_us'] - r['fold_us']:.0f} | {r['B'] * 1e6 / r['fold_us']:,.0f} |")


if __name__ == "__main__":
    main()
