"""Decode attention as a model runs it: one call per layer, back to back in one CUDA graph.

``kernels_decode`` times one decode call per replay, so at small caches its numbers are mostly the
graph launch and the kernel's fixed latency (length load, pipeline fill, merge tail), and at every size
they include do_bench's L2 clearing just before the one kernel. A generation step instead runs the
decode attention of every layer in a row, each against its own cache; with programmatic dependent
launch (our kernels, inside graphs) a kernel's launch overlaps the end of the one before. This
benchmark builds that: ``layers`` distinct caches (same shapes as docs/peers: bf16, HQ=32, H=8, D=128,
one new token per sequence, full caches), one graph of ``layers`` decode calls, timed with do_bench
(L2 cleared before each replay, not between layers), reported per layer. SDPA (no gate) and fla run
the same way, each in its own graph; ``sweep`` times launch variants of ours in the stream and alone.
Nothing else of the model runs between the calls, so this is the attention's share of a step, not a
whole step (``gatedgen bench generate`` times those).
Run: ``python -m gatedgen.bench.decode_stream [--layers 8] [--sweep]``.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from gatedgen.bench.kernels_decode import HQ, SHAPES, H, D, _bench, _fla, _graph, _tbps


def _caches(N: int, T: int, layers: int, gated: bool, seed: int):
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=gen)

    qs = [randn(N, 1, HQ, D) for _ in range(layers)]
    ks = [randn(N, T, H, D) for _ in range(layers)]
    vs = [randn(N, T, H, D) for _ in range(layers)]
    gcs = [None] * layers
    if gated:
        gcs = [torch.cumsum(F.logsigmoid(torch.randn(N, T, HQ, device="cuda", generator=gen) + 4), 1)
               for _ in range(layers)]
    return qs, ks, vs, gcs


def _ours_us(N: int, T: int, layers: int, gated: bool, seed: int) -> float:
    qs, ks, vs, gcs = _caches(N, T, layers, gated, seed)
    return _stream_us(qs, ks, vs, gcs, {})


def _stream_us(qs, ks, vs, gcs, kw: dict) -> float:
    """Per-call time of len(qs) decode calls (launch choices ``kw``) replayed from one graph."""
    from kernels.attn import decoding

    N = qs[0].shape[0]
    lens = torch.full((N,), ks[0].shape[1], dtype=torch.int32, device="cuda")

    def step():
        return [decoding._decode_attn(q, k, v, gc, lens, **kw) for q, k, v, gc in zip(qs, ks, vs, gcs)]

    step()  # compile and plan outside the capture
    return _bench(_graph(step)) * 1e3 / len(qs)


def _sdpa_us(N: int, T: int, layers: int, seed: int) -> float:
    # SDPA's layout [N, heads, T, D]; GQA through enable_gqa
    qs, ks, vs, _ = _caches(N, T, layers, False, seed)
    qs = [q.transpose(1, 2) for q in qs]
    ks = [k.transpose(1, 2).contiguous() for k in ks]
    vs = [v.transpose(1, 2).contiguous() for v in vs]

    def step():
        return [F.scaled_dot_product_attention(q, k, v, enable_gqa=True) for q, k, v in zip(qs, ks, vs)]

    return _bench(_graph(step)) * 1e3 / layers


def _fla_us(N: int, T: int, layers: int, gated: bool, seed: int) -> float | None:
    """fla's attn_decoding_one_step the same way (packed sequences, raw gates g as fla takes them),
    or None where fla is not importable. Replayed from a graph; where fla's call cannot be captured,
    the calls run eagerly back to back (each is ~0.3-10 ms of kernel, so the host time hides)."""
    fla = _fla()
    if fla is None:
        return None
    gen = torch.Generator(device="cuda").manual_seed(seed)
    qs, ks, vs, _ = _caches(N, T, layers, False, seed)
    gs = [F.logsigmoid(torch.randn(N, T, HQ, device="cuda", generator=gen) + 4) if gated else None
          for _ in range(layers)]
    cu = torch.arange(0, N + 1, device="cuda", dtype=torch.long) * T

    def step():
        return [fla(q.view(1, N, HQ, D), k.view(1, N * T, H, D), v.view(1, N * T, H, D),
                    g=None if g is None else g.view(1, N * T, HQ), cu_seqlens=cu)
                for q, k, v, g in zip(qs, ks, vs, gs)]

    step()
    try:
        fn = _graph(step)
    except Exception:  # noqa: BLE001 - a peer that cannot be captured is timed eagerly
        torch.cuda.synchronize()
        fn = step
    return _bench(fn) * 1e3 / layers


def layer_stream(N: int, T: int, layers: int = 8, gated: bool = True, seed: int = 0, fla: bool = True) -> dict:
    """Per-layer time (us) and K+V bandwidth of ours, SDPA (no gate) and fla, ``layers`` calls per
    replay (fla_us None where fla is not importable or not asked for)."""
    row = {"N": N, "T": T, "gated": gated, "layers": layers}
    row["us"] = _ours_us(N, T, layers, gated, seed)
    torch.cuda.empty_cache()
    row["sdpa_us"] = _sdpa_us(N, T, layers, seed)
    torch.cuda.empty_cache()
    row["fla_us"] = _fla_us(N, T, layers, gated, seed) if fla else None
    torch.cuda.empty_cache()
    for key in ("us", "sdpa_us", "fla_us"):
        if row[key] is not None:
            row[key.replace("us", "tbps")] = _tbps(N, T, row[key])
    return row


def run(layers: int = 8, shapes=None, quick: bool = False) -> list[dict]:
    """The table's rows: every shape of docs/peers (``quick``: the three of kernels_decode's quick run)."""
    if shapes is None:
        shapes = SHAPES[:2] + SHAPES[3:4] if quick else SHAPES
    rows = []
    for N, T in shapes:
        for gated in (True, False):
            rows.append(layer_stream(N, T, layers, gated))
    return rows


# launch variants (keyword overrides of kernels.attn.decoding._decode_attn) for ``sweep``
VARIANTS = {
    "default": {},
    "s4": {"num_stages": 4},
    "s5": {"num_stages": 5},
    "bs32-s4": {"block_s": 32, "num_stages": 4},
    "bs128-w8": {"block_s": 128, "num_warps": 8},
    "bs128-w4": {"block_s": 128, "num_warps": 4},
    "pps2": {"programs_per_sm": 2},
    "pps2-s4": {"programs_per_sm": 2, "num_stages": 4},
    "default-again": {},
}


def sweep(shapes=((1, 32768), (1, 131072), (8, 8192), (32, 4096)), variants=None, layers: int = 8) -> list[dict]:
    """Per variant, shape and gating: per-layer time in a stream of ``layers`` calls and the time of one
    call alone (both graph-replayed, us), on the same caches."""
    variants = variants or VARIANTS
    rows = []
    for N, T in shapes:
        qs, ks, vs, gcs = _caches(N, T, layers, True, 0)
        for gated in (True, False):
            g = gcs if gated else [None] * layers
            for name, kw in variants.items():
                row = {"N": N, "T": T, "gated": gated, "variant": name}
                row["stream_us"] = _stream_us(qs, ks, vs, g, kw)
                row["single_us"] = _stream_us(qs[:1], ks[:1], vs[:1], g[:1], kw)
                print(f"{N} x {T} g={gated} {name}: stream {row['stream_us']:.1f} us "
                      f"({_tbps(N, T, row['stream_us']):.2f} TB/s), single {row['single_us']:.1f} us", flush=True)
                rows.append(row)
        del qs, ks, vs, gcs, g
        torch.cuda.empty_cache()
    return rows


def format_sweep(rows) -> str:
    names = list(dict.fromkeys(r["variant"] for r in rows))
    lines = ["| N x T | g | " + " | ".join(f"{n} stream / single us" for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    cells: dict = {}
    for r in rows:
        cells.setdefault((r["N"], r["T"], r["gated"]), {})[r["variant"]] = r
    for (N, T, gated), by in cells.items():
        lines.append(f"| {N} x {T} | {'yes' if gated else 'no'} | " + " | ".join(
            f"{by[n]['stream_us']:.1f} / {by[n]['single_us']:.1f}" if n in by else "—" for n in names) + " |")
    return "\n".join(lines)


def format_table(rows) -> str:
    lines = [
        "| N x T | g | layers | ours us per layer / TB/s | SDPA (no g) us per layer / TB/s | fla us per layer / TB/s "
        "| x SDPA | x fla |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fla = r.get("fla_us")
        fla_cell = "—" if fla is None else f"{fla:.0f} / {r['fla_tbps']:.2f}"
        x_fla = "—" if fla is None else f"{fla / r['us']:.1f}"
        lines.append(
            f"| {r['N']} x {r['T']} | {'yes' if r['gated'] else 'no'} | {r['layers']} "
            f"| {r['us']:.1f} / {r['tbps']:.2f} | {r['sdpa_us']:.1f} / {r['sdpa_tbps']:.2f} | {fla_cell} "
            f"| {r['sdpa_us'] / r['us']:.2f} | {x_fla} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--sweep", action="store_true", help="launch variants instead of the table")
    args = parser.parse_args()
    if args.sweep:
        print(format_sweep(sweep(layers=args.layers)), flush=True)
    else:
        print(format_table(run(args.layers)), flush=True)


if __name__ == "__main__":
    main()
