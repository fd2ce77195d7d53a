"""GPU timings for RoPE fusion and the prefill fast path (run by scripts/gpu_rope.sh; needs CUDA).

1. replay: GPU time of one CUDA-graph decode step (no host sync between replays), 135m / 135m-llama,
   batch 1 and 32 (same method as scripts/gpu_generate.sh).
2. prefill: one forward of T = 128 / 2048 tokens into an empty cache (last_only, as a Session does):
   host time to return from the forward without a sync, and wall time with the sync.
3. micro: host time per call of parallel_attn (autograd Function as before vs the inference fast path
   vs the bare launcher) and of one layer's RoPE (the former eager formulas vs the fused kernel).
Prints one line per measurement and a table last; writes rope_bench.json to $OUT.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch

import kernels
from gatedgen.bench.generate import PRESETS, random_model, replay_step_us
from gatedgen.engine import Decoder
from gatedgen.model import rope_cos_sin, rope_inv_freq
from kernels.attn import parallel

ROWS: list[tuple[str, str, str]] = []  # (measurement, case, value)


def record(what: str, case: str, value: str) -> None:
    ROWS.append((what, case, value))
    print(f"{what:<34} {case:<34} {value}", flush=True)


def sync() -> None:
    torch.cuda.synchronize()


def replay_step(model, B: int) -> float:
    """us of GPU time per replayed decode step at 192 cached tokens."""
    return replay_step_us(model, B)


@torch.inference_mode()
def prefill_times(model, T: int, repeats: int = 7) -> tuple[float, float]:
    """(host ms to return from the forward, wall ms with the sync), medians."""
    cache = model.new_cache(1, T + 1)
    x = torch.randint(0, model.cfg.vocab_size, (1, T), device="cuda")
    host, wall = [], []
    for i in range(repeats + 2):
        cache.reset()
        sync()
        t0 = time.perf_counter()
        model(x, cache, mode="prefill", last_only=True)
        t1 = time.perf_counter()
        sync()
        t2 = time.perf_counter()
        if i >= 2:  # two warm-ups: compilation, cuBLAS handles
            host.append(t1 - t0)
            wall.append(t2 - t0)
    return statistics.median(host) * 1e3, statistics.median(wall) * 1e3


def per_call(fn, n: int = 300) -> tuple[float, float]:
    """(host us per call without syncs, wall us per call including the final sync)."""
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    sync()
    t2 = time.perf_counter()
    return (t1 - t0) / n * 1e6, (t2 - t0) / n * 1e6


def old_rope(q, k, positions, D, theta):
    """The model's RoPE before this change: tables per layer, two eager rotations."""
    inv_freq = rope_inv_freq(D, theta, None, positions.device)
    angles = positions.float()[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)[:, :, None, :]
    cos, sin = angles.cos(), angles.sin()

    def rot(x):
        x1, x2 = x.float().chunk(2, dim=-1)
        return (x.float() * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)

    return rot(q), rot(k)


def micro(summary: dict[str, str]) -> None:
    dt = torch.bfloat16
    HQ, H, D = 9, 3, 64
    with torch.inference_mode():
        for T in (128, 2048):
            q = torch.randn(1, T, HQ, D, device="cuda", dtype=dt)
            k = torch.randn(1, T, H, D, device="cuda", dtype=dt)
            v = torch.randn(1, T, H, D, device="cuda", dtype=dt)
            gc = torch.randn(1, T, HQ, device="cuda").cumsum(1) * -0.01
            scale = D**-0.5
            for gated in (False, True):
                g = gc if gated else None
                tag = f"T={T} {'gated' if gated else 'ungated'}"
                cases = {
                    "autograd Function (before)": lambda: parallel.ParallelAttentionFunction.apply(
                        q, k, v, None, g, scale, None, True),
                    "kernels.parallel_attn (fast path)": lambda: kernels.parallel_attn(q, k, v, gc=g),
                    "parallel_attn_fwd (launcher only)": lambda: parallel.parallel_attn_fwd(
                        q, k, v, g.float().contiguous() if g is not None else None, scale, None),
                }
                for name, fn in cases.items():
                    h, w = per_call(fn)
                    record(f"attn {name}", tag, f"host {h:6.1f} us  wall {w:6.1f} us")
                    if T == 128:
                        summary[f"attn {name}, {tag}: host (us/call)"] = f"{h:.1f}"
    # training path for reference: inputs that need gradients (autograd Function + saved tensors)
    q = torch.randn(1, 128, HQ, D, device="cuda", dtype=dt, requires_grad=True)
    k = torch.randn(1, 128, H, D, device="cuda", dtype=dt, requires_grad=True)
    v = torch.randn(1, 128, H, D, device="cuda", dtype=dt, requires_grad=True)
    h, w = per_call(lambda: kernels.parallel_attn(q, k, v))
    record("attn parallel_attn (grad inputs)", "T=128 ungated", f"host {h:6.1f} us  wall {w:6.1f} us")

    # one layer's RoPE: eager formulas with tables per layer (before) vs the fused kernel with the pass's tables
    with torch.inference_mode():
        inv_freq = rope_inv_freq(D, 10000.0, None, "cuda")
        for B, T in ((1, 1), (32, 1), (1, 2048)):
            qkv = torch.randn(B, T, (HQ + 2 * H) * D, device="cuda", dtype=dt)
            q = qkv[..., : HQ * D].view(B, T, HQ, D)
            k = qkv[..., HQ * D : (HQ + H) * D].view(B, T, H, D)
            positions = torch.arange(T, device="cuda")[None].expand(B, T) + 100
            cos, sin = rope_cos_sin(positions, inv_freq)
            qo, ko = old_rope(q, k, positions, D, 10000.0)
            qn, kn = kernels.apply_rope(q, k, cos, sin)
            err = max((qo.float() - qn.float()).abs().max().item(), (ko.float() - kn.float()).abs().max().item())
            for name, fn in (("eager per layer (before)", lambda: old_rope(q, k, positions, D, 10000.0)),
                             ("fused kernel (after)", lambda: kernels.apply_rope(q, k, cos, sin)),
                             ("tables once per pass", lambda: rope_cos_sin(positions, inv_freq))):
                h, w = per_call(fn)
                record(f"rope {name}", f"B={B} T={T}", f"host {h:6.1f} us  wall {w:6.1f} us")
                if "table" not in name:
                    summary[f"rope {name}, B={B} T={T}: host / wall (us/layer)"] = f"{h:.1f} / {w:.1f}"
            record("rope max |before - after|", f"B={B} T={T}", f"{err:.3g}")


def main() -> None:
    out = os.environ.get("OUT", "out")
    torch.manual_seed(0)
    summary: dict[str, str] = {}
    for name in ("135m", "135m-llama"):
        m = random_model(PRESETS[name], "cuda", torch.bfloat16)
        for B in (1, 32):
            us = replay_step(m, B)
            record("replay decode step", f"{name} B={B}", f"{us:7.0f} us/step")
            summary[f"replay {name} B={B} (us/step)"] = f"{us:.0f}"
        Decoder(m, m.new_cache(1, 8))  # the model as a Session runs it (fused projections)
        for T in (128, 2048):
            host, wall = prefill_times(m, T)
            record("prefill forward", f"{name} T={T}", f"host {host:6.2f} ms  wall {wall:6.2f} ms  "
                   f"({T / wall * 1e3:,.0f} tok/s)")
            summary[f"prefill {name} T={T} host / wall (ms)"] = f"{host:.2f} / {wall:.2f}"
        del m
        torch.cuda.empty_cache()
    micro(summary)
    json.dump({"rows": ROWS, "summary": summary}, open(os.path.join(out, "rope_bench.json"), "w"), indent=1)
    print("\n| measurement | value |\n|---|---|")
    for key, value in summary.items():
        print(f"| {key} | {value} |")


if __name__ == "__main__":
    sys.exit(main())
