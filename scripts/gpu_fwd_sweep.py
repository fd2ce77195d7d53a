"""Forward block/TMA sweep of the parallel attention kernel on the GPU (one device call).

For each shape (bf16, causal) and each (BT, BS, num_warps, num_stages) x {TMA, pointer loads}, the
gated and ungated forward in TFLOP/s (FlashAttention convention, do_bench medians), with torch SDPA
and fla's gated forward timed in the same run. Prints one row per variant as it finishes, the
compiled kernels' registers/spills, and a summary table last. Env: SWEEP_SECONDS (budget, default
200), FWD_SHAPES ("name:B:T:HQ:H:D,..."), FWD_CONFIGS ("BT:BS:W:S[:R],...", R = maxnreg),
FWD_LOADS ("tma:gate_t,...").
Run from the repo root: python3 scripts/gpu_fwd_sweep.py
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F
import triton

from gatedgen.bench.compiled import print_compiled
from kernels.attn import parallel as par
from kernels.attn import parallel_tuning as tun

SHAPES = [("16x128", 4, 4096, 16, 16, 128), ("16x128", 16, 1024, 16, 16, 128), ("gqa32:8x128", 4, 4096, 32, 8, 128),
          ("16x128", 1, 16384, 16, 16, 128), ("32x64", 4, 4096, 32, 32, 64)]
CONFIGS = {
    128: [(128, 32, 4, 4), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3)],
    64: [(128, 64, 4, 3), (128, 128, 8, 3), (128, 64, 8, 3), (64, 64, 4, 3)],
}
# (K/V through TMA, where the unmasked blocks read the gate sums: kernels.attn.parallel._GATE_T)
LOADS = [(True, 1), (True, 0), (False, 1)]
if os.environ.get("FWD_LOADS"):  # "tma:gate_t,..." (0/1 each)
    LOADS = [(bool(int(a)), int(b)) for a, b in (item.split(":") for item in os.environ["FWD_LOADS"].split(","))]


def _parse():
    shapes, configs = SHAPES, CONFIGS
    if os.environ.get("FWD_SHAPES"):
        shapes = []
        for item in os.environ["FWD_SHAPES"].split(","):
            name, *nums = item.split(":")
            shapes.append((name, *map(int, nums)))
    if os.environ.get("FWD_CONFIGS"):
        cfgs = [tuple(map(int, c.split(":"))) for c in os.environ["FWD_CONFIGS"].split(",")]
        configs = {128: cfgs, 64: cfgs}
    return shapes, configs


def _bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def main() -> None:
    shapes, configs = _parse()
    deadline = time.time() + float(os.environ.get("SWEEP_SECONDS", "200"))
    try:
        from fla.ops.attn.parallel import parallel_attn as fla_attn
    except Exception:  # noqa: BLE001
        fla_attn = None
    kinds = ("fwd", "fwd_ungated", "fwd_long")  # all take the swept blocks
    default = {kind: dict(tun._BLOCKS[kind]) for kind in kinds}
    loads_default = par._TMA, par._GATE_T
    summary = []
    for name, B, T, HQ, H, D in shapes:
        torch.manual_seed(0)
        q = torch.randn(B, T, HQ, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16)
        g = F.logsigmoid(torch.randn(B, T, HQ, device="cuda") + 4)
        fl = 2.0 * B * HQ * T * T * D
        qs, ks, vs = (x.transpose(1, 2).contiguous() for x in (q, k, v))
        sdpa = fl / _bench(lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=True,
                                                                  enable_gqa=HQ != H)) / 1e9
        fla_g = fl / _bench(lambda: fla_attn(q, k, v, g=g)) / 1e9 if fla_attn else float("nan")
        ref = {gate: par.parallel_attn(q, k, v, g if gate else None).float() for gate in (True, False)}
        print(f"== {name} B={B} T={T}: SDPA {sdpa:.0f}, fla gated {fla_g:.0f} TFLOP/s", flush=True)
        best = {}
        for cfg in configs[D]:
            for tma, gate_t in LOADS:
                if time.time() > deadline:
                    print(f"{cfg} tma={tma} gate_t={gate_t}: skipped (budget)", flush=True)
                    continue
                for kind in kinds:
                    tun._BLOCKS[kind][D] = cfg
                tun._blocks.cache_clear()
                par._TMA, par._GATE_T = tma, gate_t
                cells = []
                for gate in (True, False) if (tma, gate_t) == LOADS[0] else (True,):
                    fn = (lambda gate=gate: par.parallel_attn(q, k, v, g if gate else None))
                    try:
                        err = (fn().float() - ref[gate]).abs().max().item()
                        tf = fl / _bench(fn) / 1e9
                    except Exception as e:  # noqa: BLE001
                        print(f"{cfg} tma={tma} gated={gate}: failed {type(e).__name__}: {str(e)[:200]}", flush=True)
                        tf, err = float("nan"), float("nan")
                    cells.append((tf, err))
                    key = "g" if gate else "u"
                    if tf == tf and tf > best.get(key, (0,))[0]:
                        best[key] = (tf, cfg, (tma, gate_t))
                ungated = f"  ungated {cells[1][0]:.0f} (err {cells[1][1]:.1e})" if len(cells) > 1 else ""
                print(f"{cfg} tma={tma} gate_t={gate_t}: gated {cells[0][0]:.0f} (err {cells[0][1]:.1e}){ungated}",
                      flush=True)
        for kind in kinds:
            tun._BLOCKS[kind] = dict(default[kind])
        tun._blocks.cache_clear()
        par._TMA, par._GATE_T = loads_default
        summary.append((name, B, T, sdpa, fla_g, best))
        torch.cuda.empty_cache()
    print_compiled([("fwd", par.parallel_attn_fwd_kernel)])
    print("\n| shape | B | T | SDPA | fla g | best g (cfg, (tma, gate_t)) | g/fla | g/SDPA | best no-g (cfg, (tma, gate_t)) | no-g/SDPA |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, B, T, sdpa, fla_g, best in summary:
        bg, bu = best.get("g", (float("nan"), None, None)), best.get("u", (float("nan"), None, None))
        print(f"| {name} | {B} | {T} | {sdpa:.0f} | {fla_g:.0f} | {bg[0]:.0f} {bg[1]} {bg[2]} | {bg[0] / fla_g:.2f} "
              f"| {bg[0] / sdpa:.2f} | {bu[0]:.0f} {bu[1]} {bu[2]} | {bu[0] / sdpa:.2f} |")


if __name__ == "__main__":
    main()
