"""Decode attention benchmark: our split-KV kernel next to fla and torch SDPA.

Shapes as docs/peers: bf16, HQ=32, H=8, D=128, one new token per sequence, N sequences x T cached
tokens (the cache is full: cache_seqlens = T), with and without forget gates (g = logsigmoid(randn
+ 4), fp32). Effective bandwidth = bytes of K and V read, 2*N*T*H*D*2, over the time. Times are
triton.testing.do_bench medians (it clears L2 between repetitions); "graph" replays our decode step
captured in a CUDA graph, which removes the launch overhead that dominates small shapes.
``merge_sweep`` times the two ways of merging the split partials (a second kernel, or fused into the
split kernel through a last-program-done counter) side by side from graphs; ``append_sweep`` the
cache append with a token-block grid against one program per (b, KV head).
Read ceiling (``read_ceiling``, code in gatedgen/bench/read_ceiling.py): per shape, the fastest
graph-replayed time, under the very same timing as the graph column, in which plain readers (a Triton
kernel summing K and V into per-program partials, launch variants swept; torch.sum) read the same K
and V bytes with no attention at all -- what is physically possible at these bytes -- plus the floor,
an empty kernel replayed the same way (graph launch + event timing). The table shows it beside our
graph time ("ours graph / ceiling" = ceiling us / our graph us: 1.00 would be a pure read).
Run: ``python -m gatedgen.bench.kernels_decode [--quick] [--merge] [--append] [--ceiling]``.
"""

from __future__ import annotations

import argparse
import functools
import math

import torch
import torch.nn.functional as F

SHAPES = [(1, 4096), (1, 32768), (1, 131072), (8, 8192), (32, 4096)]
HQ, H, D = 32, 8, 128

# launch variants of our kernel (keyword overrides of kernels.attn.decoding._decode_attn)
VARIANTS = {
    "default": {},
    "bcast": {"use_dot": False},
    "dot64": {"use_dot": True, "block_s": 64, "num_warps": 4, "num_stages": 3},
    "dot64-s2": {"use_dot": True, "block_s": 64, "num_warps": 4, "num_stages": 2},
    "dot64-s4": {"use_dot": True, "block_s": 64, "num_warps": 4, "num_stages": 4},
    "dot32-s4": {"use_dot": True, "block_s": 32, "num_warps": 4, "num_stages": 4},
    "dot128-w8": {"use_dot": True, "block_s": 128, "num_warps": 8, "num_stages": 3},
    "dot64-pps2": {"use_dot": True, "block_s": 64, "programs_per_sm": 2},
    "dot64-pps8": {"use_dot": True, "block_s": 64, "programs_per_sm": 8},
    "fused": {"merge": "fused"},
    "fused-pps2": {"merge": "fused", "programs_per_sm": 2},
}

# partial merge: second kernel vs fused (the module default decides what "default" above means)
MERGE_SHAPES = [(1, 4096), (1, 32768), (1, 131072), (8, 8192), (32, 4096)]
MERGE_VARIANTS = {
    "fused-ceil": {"merge": "fused", "programs_per_sm": 1, "split_rule": "ceil"},  # the 2026-11-24 default
    "fused": {"merge": "fused", "programs_per_sm": 1, "split_rule": "waves"},
    "kernel": {"merge": "kernel", "programs_per_sm": 1, "split_rule": "waves"},
    "fused-pps2": {"merge": "fused", "programs_per_sm": 2, "split_rule": "waves"},
    "fused-s4": {"merge": "fused", "programs_per_sm": 1, "split_rule": "waves", "num_stages": 4},
    "fused-bs128w8": {"merge": "fused", "programs_per_sm": 1, "split_rule": "waves", "block_s": 128,
                      "num_warps": 8},
}


def _bench(fn) -> float:
    import triton

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def _graph(fn):
    """Capture fn once in a CUDA graph; return its replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _fla():
    try:
        from fla.ops.attn.decoding import attn_decoding_one_step
    except Exception:  # noqa: BLE001 - fla is optional
        return None
    return attn_decoding_one_step


def _inputs(N, T, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(N, 1, HQ, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(N, T, H, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    v = torch.randn(N, T, H, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    g = F.logsigmoid(torch.randn(N, T, HQ, device="cuda", generator=gen) + 4)
    gc = torch.cumsum(g, dim=1)
    lens = torch.full((N,), T, dtype=torch.int32, device="cuda")
    return q, k, v, g, gc, lens


def _rel_err(out, ref) -> float:
    out, ref = out.float(), ref.float()
    if torch.isnan(out).any():
        return float("nan")
    return ((out - ref).norm() / ref.norm()).item()


def _tbps(N, T, us) -> float:
    return 2 * N * T * H * D * 2 / (us * 1e-6) / 1e12


def sweep(shapes=((1, 4096), (1, 32768), (32, 4096)), variants=None, gated=True) -> list[dict]:
    """Our kernel under each launch variant: time (us) per shape, checked against the default."""
    from kernels.attn import decoding

    variants = variants or VARIANTS
    rows = []
    for N, T in shapes:
        q, k, v, _, gc, lens = _inputs(N, T)
        gc = gc if gated else None
        base = decoding.decode_attn(q, k, v, gc, lens)
        for name, kw in variants.items():
            def fn(kw=kw):
                return decoding._decode_attn(q, k, v, gc, lens, **kw)

            err = _rel_err(fn(), base)
            us = _bench(fn) * 1e3
            row = {"variant": name, "N": N, "T": T, "gated": gated, "us": us, "err_vs_default": err}
            rows.append(row | {"tbps": _tbps(N, T, us)})
        del q, k, v, gc
        torch.cuda.empty_cache()
    return rows


def best_variant(rows) -> str:
    """Variant with the smallest geometric-mean time over the swept shapes."""
    names = sorted({r["variant"] for r in rows})
    score = {n: sum(math.log(r["us"]) for r in rows if r["variant"] == n) for n in names}
    return min(score, key=score.get)


def read_ceiling(N: int, T: int, variants: dict | None = None, kv=None) -> dict:
    """Same-bytes read ceiling of one shape (see gatedgen.bench.read_ceiling.read_ceiling)."""
    from gatedgen.bench import read_ceiling as rc

    return rc.read_ceiling(N, T, variants, kv)


def format_ceiling(rows: list[dict]) -> str:
    from gatedgen.bench import read_ceiling as rc

    return rc.format_ceiling(rows)


def run(quick: bool = False, variant: dict | None = None, ceiling: bool = True) -> list[dict]:
    """One dict per (shape, gated): us and TB/s for ours (eager, CUDA graph), fla and SDPA; with
    ``ceiling``, the shape's read ceiling (ceil_us, ceil_tbps) and empty-launch floor (floor_us)."""
    from kernels.attn import decoding, naive

    kw = variant or {}
    fla = _fla()
    shapes = SHAPES[:2] + SHAPES[3:4] if quick else SHAPES
    rows = []
    for N, T in shapes:
        q, k, v, g, gc, lens = _inputs(N, T)
        # SDPA layout [N, heads, T, D]; GQA through enable_gqa
        qs, ks, vs = q.transpose(1, 2), k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()

        def sdpa():
            return F.scaled_dot_product_attention(qs, ks, vs, enable_gqa=True)

        sdpa_us = _bench(sdpa) * 1e3
        ceil = read_ceiling(N, T, kv=(k, v)) if ceiling else {}
        ceil = {key: ceil[key] for key in ("ceil_us", "ceil_tbps", "floor_us") if key in ceil}
        for gated in (True, False):
            gcc = gc if gated else None
            row = {"N": N, "T": T, "gated": gated} | ceil

            def ours(gcc=gcc):
                return decoding._decode_attn(q, k, v, gcc, lens, **kw)

            o = ours()
            ref = naive.decode_attn(q.float(), k.float(), v.float(), gcc, cache_seqlens=lens)
            row["err"] = _rel_err(o, ref)
            row["us"] = _bench(ours) * 1e3
            row["graph_us"] = _bench(_graph(ours)) * 1e3
            row["sdpa_us"] = sdpa_us
            if not gated:
                row["sdpa_err"] = _rel_err(sdpa().transpose(1, 2), ref)
            del ref
            if fla is not None:
                cu = torch.arange(0, N + 1, device="cuda", dtype=torch.long) * T

                def peer(gated=gated):
                    return fla(
                        q.view(1, N, HQ, D), k.view(1, N * T, H, D), v.view(1, N * T, H, D),
                        g=g.view(1, N * T, HQ) if gated else None, cu_seqlens=cu,
                    )

                row["fla_us"] = _bench(peer) * 1e3
                row["fla_err"] = _rel_err(peer().view(N, 1, HQ, D), o)
            for key in ("us", "graph_us", "sdpa_us", "fla_us"):
                if key in row:
                    row[key.replace("us", "tbps")] = _tbps(N, T, row[key])
            rows.append(row)
        del q, k, v, g, gc, qs, ks, vs
        torch.cuda.empty_cache()
    return rows


def merge_sweep(shapes=None, variants=None, gated=True) -> list[dict]:
    """Graph-replayed time (us) of each merge variant per shape, next to SDPA (eager and replayed)."""
    from kernels.attn import decoding

    variants = variants or MERGE_VARIANTS
    rows = []
    for N, T in shapes or MERGE_SHAPES:
        q, k, v, _, gc, lens = _inputs(N, T)
        gc = gc if gated else None
        qs, ks, vs = q.transpose(1, 2), k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
        sdpa = functools.partial(F.scaled_dot_product_attention, qs, ks, vs, enable_gqa=True)
        row = {"N": N, "T": T, "gated": gated, "sdpa_us": _bench(sdpa) * 1e3}
        row["sdpa_graph_us"] = _bench(_graph(sdpa)) * 1e3
        del sdpa, ks, vs
        base = None
        for name, kw in variants.items():
            fn = functools.partial(decoding._decode_attn, q, k, v, gc, lens, **kw)
            o = fn()
            base = o if base is None else base  # the first variant is the yardstick
            row[f"{name}_err"] = _rel_err(o, base)
            row[f"{name}_ns"] = decoding.num_splits(N, H, T, kw.get("block_s", 64), q.device,
                                                    kw.get("programs_per_sm"), kw.get("split_rule"))
            row[f"{name}_us"] = _bench(_graph(fn)) * 1e3
        rows.append(row)
        del q, k, v, gc, fn, base
        torch.cuda.empty_cache()
    return rows


def best_merge_variant(rows) -> str:
    """Merge variant with the smallest geometric-mean graph time over the swept shapes."""
    names = [key[:-3] for key in rows[0] if key.endswith("_us") and not key.startswith("sdpa")]
    return min(names, key=lambda n: sum(math.log(r[f"{n}_us"]) for r in rows))


def format_merge(rows) -> str:
    names = [key[:-3] for key in rows[0] if key.endswith("_us") and not key.startswith("sdpa")]
    head = " | ".join(f"{n} us (TB/s) [NS]" for n in names)
    lines = [
        f"| N x T | g | {head} | SDPA us | SDPA graph us | best | best x SDPA graph | max err |",
        "|---|---|" + "---|" * (len(names) + 5),
    ]
    for r in rows:
        best = min(names, key=lambda n: r[f"{n}_us"])
        cells = [f"{r[n + '_us']:.1f} ({_tbps(r['N'], r['T'], r[n + '_us']):.2f}) [{r[n + '_ns']}]" for n in names]
        err = max(r[f"{n}_err"] for n in names)
        lines.append(
            f"| {r['N']} x {r['T']} | {'yes' if r['gated'] else 'no'} | " + " | ".join(cells)
            + f" | {r['sdpa_us']:.1f} | {r['sdpa_graph_us']:.1f} | {best} "
            f"| {r['sdpa_graph_us'] / r[best + '_us']:.2f} | {err:.1e} |"
        )
    return "\n".join(lines)


# cache append (135M-class model: 9 query heads, 3 KV heads, D = 64), bf16, gates as logits
APPEND_CASES = [(1, 2048), (1, 1), (32, 1)]  # (batch, new tokens): a long prompt and decode steps
APPEND_VARIANTS = {"token-blocks": {}, "per-head": {"chunk": 1 << 30}}


def append_sweep(cases=APPEND_CASES, variants=None, HQa=9, Ha=3, Da=64) -> list[dict]:
    """Graph-replayed time (us) of the cache append (fused forget gate) per grid variant."""
    from kernels.attn import decoding

    variants = variants or APPEND_VARIANTS
    rows = []
    for B, Tn in cases:
        Tmax = Tn + 128
        kc = torch.zeros(B, Tmax, Ha, Da, device="cuda", dtype=torch.bfloat16)
        vc, gc = torch.zeros_like(kc), torch.zeros(B, Tmax, HQa, device="cuda")
        proj = torch.randn(B, Tn, 2 * Ha * Da + HQa, device="cuda", dtype=torch.bfloat16)
        k, v = proj[..., : Ha * Da].view(B, Tn, Ha, Da), proj[..., Ha * Da : 2 * Ha * Da].view(B, Tn, Ha, Da)
        f = proj[..., 2 * Ha * Da :]
        lens = torch.full((B,), 64, dtype=torch.int32, device="cuda")
        row = {"B": B, "Tn": Tn}
        outs = {}
        for name, kw in variants.items():
            fn = functools.partial(decoding.append_kv, kc, vc, gc, k, v, f, lens, logits=True, **kw)
            fn()
            outs[name] = (kc.clone(), gc.clone())
            row[f"{name}_us"] = _bench(_graph(fn)) * 1e3
        ref_k, ref_g = next(iter(outs.values()))
        row["k_equal"] = all(torch.equal(o[0], ref_k) for o in outs.values())
        row["gc_err"] = max(_rel_err(o[1], ref_g) for o in outs.values())
        rows.append(row)
    return rows


def format_append(rows) -> str:
    names = [key[:-3] for key in rows[0] if key.endswith("_us")]
    lines = ["| B x Tn | " + " | ".join(f"{n} us" for n in names) + " | k/v equal | gc rel diff |",
             "|---|" + "---|" * (len(names) + 2)]
    for r in rows:
        lines.append(f"| {r['B']} x {r['Tn']} | " + " | ".join(f"{r[n + '_us']:.1f}" for n in names)
                     + f" | {r['k_equal']} | {r['gc_err']:.1e} |")
    return "\n".join(lines)


def ceilings() -> dict:
    """Device-to-device copy (bytes read + written) and a read-only reduction, 1 GiB each."""
    x = torch.randn(2**29, device="cuda", dtype=torch.bfloat16)
    y = torch.empty_like(x)
    copy_us = _bench(lambda: y.copy_(x)) * 1e3
    read_us = _bench(lambda: x.sum(dtype=torch.float32)) * 1e3
    return {"copy_tbps": 2 * x.numel() * 2 / copy_us / 1e6, "read_tbps": x.numel() * 2 / read_us / 1e6}


def format_table(rows) -> str:
    def f(x, fmt):
        return "—" if x is None else format(x, fmt)

    lines = [
        "| N x T | g | ours us / TB/s | ours graph us / TB/s | read ceiling graph us / TB/s "
        "| ours graph / ceiling | fla us / TB/s | SDPA (no g) us / TB/s | x fla | x SDPA | graph x SDPA | err |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fla_us, ceil_us = r.get("fla_us"), r.get("ceil_us")
        lines.append(
            f"| {r['N']} x {r['T']} | {'yes' if r['gated'] else 'no'} "
            f"| {r['us']:.1f} / {r['tbps']:.2f} | {r['graph_us']:.1f} / {r['graph_tbps']:.2f} "
            f"| {f(ceil_us, '.1f')} / {f(r.get('ceil_tbps'), '.2f')} "
            f"| {f(ceil_us / r['graph_us'] if ceil_us else None, '.2f')} "
            f"| {f(fla_us, '.0f')} / {f(r.get('fla_tbps'), '.2f')} "
            f"| {r['sdpa_us']:.1f} / {r['sdpa_tbps']:.2f} "
            f"| {f(fla_us / r['us'] if fla_us else None, '.0f')} | {r['sdpa_us'] / r['us']:.2f} "
            f"| {r['sdpa_us'] / r['graph_us']:.2f} | {r['err']:.1e} |"
        )
    return "\n".join(lines)


def format_sweep(rows) -> str:
    lines = ["| variant | N x T | us | TB/s | err vs default |", "|---|---|---|---|---|"]
    for r in rows:
        shape = f"{r['N']} x {r['T']}"
        lines.append(
            f"| {r['variant']} | {shape} | {r['us']:.1f} | {r['tbps']:.2f} | {r['err_vs_default']:.1e} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three shapes instead of five")
    parser.add_argument("--merge", action="store_true", help="only the merge sweep (graph-replayed)")
    parser.add_argument("--append", action="store_true", help="only the cache-append sweep")
    parser.add_argument("--ceiling", action="store_true", help="only the same-bytes read ceiling per shape")
    args = parser.parse_args()
    if args.ceiling:
        print(format_ceiling([read_ceiling(N, T) for N, T in SHAPES]))
        return
    if args.merge or args.append:
        if args.append:
            print(format_append(append_sweep()))
        if args.merge:
            print(format_merge(merge_sweep()))
        return
    print(format_table(run(quick=args.quick)))


if __name__ == "__main__":
    main()
