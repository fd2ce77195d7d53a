"""Backward block/TMA sweep of the parallel attention kernel on the GPU (one device call).

Per shape (bf16, causal, gated unless the shape's name ends in "u"): fla's gated forward+backward and
torch SDPA's (ungated) beside ours with the fixed blocks (TMA on and off), then each dk/dv block
(dq fixed) and each dq block (dk/dv fixed), then the fixed blocks again (a noise check), in TFLOP/s of forward+backward (3.5 x the forward's
FlashAttention FLOPs, do_bench medians), with the gradients' largest error against the fixed blocks'.
Prints one row per variant as it finishes, the compiled backward kernels' registers/spills, and a
summary table last. Env: SWEEP_SECONDS (budget, default 240), BWD_SHAPES ("name:B:T:HQ:H:D,..."),
DKDV_CONFIGS / DQ_CONFIGS ("BT:BS:W:S,...", "" for none), NO_PEERS=1 (skip fla and SDPA).
Run from the repo root: python3 scripts/gpu_bwd_sweep.py
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

SHAPES = [("16x128", 16, 1024, 16, 16, 128), ("16x128", 4, 4096, 16, 16, 128), ("16x128", 1, 16384, 16, 16, 128),
          ("gqa32:8x128", 4, 4096, 32, 8, 128)]
DKDV = [(16, 64, 4, 3), (32, 64, 4, 3), (16, 64, 4, 4), (32, 128, 8, 3), (64, 128, 8, 3), (16, 128, 8, 3),
        (64, 64, 4, 3), (32, 64, 8, 3)]
DQ = [(128, 64, 8, 2), (128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 4, 3), (128, 128, 8, 2), (64, 32, 4, 3)]


def _configs(name: str, default):
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [tuple(map(int, c.split(":"))) for c in raw.split(",") if c]


def _shapes():
    if not os.environ.get("BWD_SHAPES"):
        return SHAPES
    shapes = []
    for item in os.environ["BWD_SHAPES"].split(","):
        name, *nums = item.split(":")
        shapes.append((name, *map(int, nums)))
    return shapes


def _bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=5, rep=40, return_mode="median")


def _set(kind: str, D: int, cfg) -> None:
    tun._BLOCKS[kind][D] = cfg
    tun._blocks.cache_clear()


def main() -> None:
    deadline = time.time() + float(os.environ.get("SWEEP_SECONDS", "240"))
    dkdv_cfgs, dq_cfgs = _configs("DKDV_CONFIGS", DKDV), _configs("DQ_CONFIGS", DQ)
    peers = os.environ.get("NO_PEERS") != "1"
    fla_attn = None
    if peers:
        try:
            from fla.ops.attn.parallel import parallel_attn as fla_attn
        except Exception:  # noqa: BLE001
            pass
    # (kinds a tree does not have are left out: the script also times older commits for A/B runs)
    default = {kind: dict(tun._BLOCKS[kind]) for kind in ("dkdv", "dkdv_gqa", "dq") if kind in tun._BLOCKS}
    summary = []
    for name, B, T, HQ, H, D in _shapes():
        gated = not name.endswith("u")
        torch.manual_seed(0)
        q = torch.randn(B, T, HQ, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        g = F.logsigmoid(torch.randn(B, T, HQ, device="cuda") + 4).requires_grad_(True) if gated else None
        do = torch.randn_like(q)
        leaves = (q, k, v, g) if gated else (q, k, v)
        fl = 2.0 * B * HQ * T * T * D

        def fwd_bwd(fn):
            return lambda: torch.autograd.grad(fn(), leaves, do)

        ours = fwd_bwd(lambda: par.parallel_attn(q, k, v, g))
        row = {"name": name, "B": B, "T": T, "gated": gated}
        if peers:
            qs, ks, vs = (x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
            dos = do.transpose(1, 2).contiguous()
            sdpa = lambda: torch.autograd.grad(  # noqa: E731
                F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=HQ != H), (qs, ks, vs), dos)
            row["sdpa"] = 3.5 * fl / _bench(sdpa) / 1e9
            if fla_attn is not None and gated:
                row["fla"] = 3.5 * fl / _bench(fwd_bwd(lambda: fla_attn(q, k, v, g=g))) / 1e9
        ref = [t.float() for t in ours()]
        row["fwd"] = fl / _bench(lambda: par.parallel_attn(q, k, v, g)) / 1e9
        cells = {}
        kv_kind = "dkdv_gqa" if HQ != H and "dkdv_gqa" in default else "dkdv"
        for label, kind, cfg, tma in ([("default", None, None, True), ("default no-TMA", None, None, False)]
                                      + [(f"dkdv {c}", kv_kind, c, True) for c in dkdv_cfgs]
                                      + [(f"dq {c}", "dq", c, True) for c in dq_cfgs]
                                      + [("default again", None, None, True)]):
            if time.time() > deadline:
                print(f"{name} T={T} {label}: skipped (budget)", flush=True)
                continue
            if kind is not None:
                _set(kind, D, cfg)
            par._TMA = tma
            try:
                err = max((a.float() - b).abs().max().item() / (b.abs().max().item() + 1e-6)
                          for a, b in zip(ours(), ref))
                tf = 3.5 * fl / _bench(ours) / 1e9
            except Exception as e:  # noqa: BLE001
                print(f"{name} T={T} {label}: failed {type(e).__name__}: {str(e)[:200]}", flush=True)
                tf, err = float("nan"), float("nan")
            cells[label] = tf
            print(f"{name} T={T} {label}: f+b {tf:.0f} TFLOP/s (grad err {err:.1e})", flush=True)
            par._TMA = True
            if kind is not None:
                _set(kind, D, default[kind][D])
        row["cells"] = cells
        summary.append(row)
        print(f"== {name} B={B} T={T}: fwd {row['fwd']:.0f}, SDPA f+b {row.get('sdpa', float('nan')):.0f}, "
              f"fla g f+b {row.get('fla', float('nan')):.0f}", flush=True)
        torch.cuda.empty_cache()
    print_compiled([("dkdv", par.parallel_attn_bwd_kernel_dkdv), ("dq", par.parallel_attn_bwd_kernel_dq)])
    print("\n| shape | B | T | gated | fwd | SDPA f+b | fla g f+b | ours f+b (fixed) | no TMA | best dkdv | best dq "
          "| fixed/fla |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in summary:
        c = r["cells"]
        base = c.get("default", float("nan"))

        def best(prefix):
            items = [(v, k) for k, v in c.items() if k.startswith(prefix) and v == v]
            return f"{max(items)[0]:.0f} {max(items)[1][len(prefix):]}" if items else "-"

        print(f"| {r['name']} | {r['B']} | {r['T']} | {r['gated']} | {r['fwd']:.0f} "
              f"| {r.get('sdpa', float('nan')):.0f} | {r.get('fla', float('nan')):.0f} | {base:.0f} "
              f"| {c.get('default no-TMA', float('nan')):.0f} "
              f"| {best('dkdv ')} | {best('dq ')} | {base / r.get('fla', float('nan')):.2f} |")


if __name__ == "__main__":
    main()
