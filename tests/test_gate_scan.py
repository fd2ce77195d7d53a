"""Triton gate running sums (kernels/attn/gate_scan.py) against the fp64 reference in kernels/attn/naive.py.

CPU: under TRITON_INTERPRET=1 (skipped when neither it nor CUDA is there); GPU: the same plus long
sequences. Fresh random gates every run (seed printed); outputs and rows start as NaN, so an element
never written shows, and the rows' padding columns must stay NaN (nothing writes past T).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import cu_seqlens_of, interpret, needs_cuda
from kernels.attn import naive

pytestmark = pytest.mark.skipif(
    not (interpret or torch.cuda.is_available()), reason="Triton kernels need CUDA or TRITON_INTERPRET=1"
)
if interpret or torch.cuda.is_available():
    from kernels.attn import gate_scan as gs

DEVICE = "cuda" if torch.cuda.is_available() and not interpret else "cpu"
# fp32 results of fp64 sums: one fp32 rounding of the sum (6e-8 relative) plus tree-order fp64
# differences; measured against the scale of the sums
TOL = 1e-6


def _gates(B, T, HQ, gen, kind):
    x = torch.randn(B, T, HQ, generator=gen)
    if kind == "typical":
        g = F.logsigmoid(x + 4)
    elif kind == "near_zero":
        g = -1e-6 * x.abs()
    else:  # history forgotten in places: gates down to -1e4 among ordinary ones
        g = torch.where(torch.rand(B, T, HQ, generator=gen) < 0.05, -1e4 * torch.rand(B, T, HQ, generator=gen),
                        F.logsigmoid(x + 2))
    return g.to(DEVICE)


def _check(out, want, rows=None, want_rows=None, T=None):
    scale = want.abs().max().clamp_min(1e-30)
    assert not torch.isnan(out).any(), "unwritten output elements"
    err = ((out.double() - want).abs().max() / scale).item()
    assert err < TOL, f"max error {err:.2e} of the sums' scale"
    if rows is not None:
        assert not torch.isnan(rows[:, :T]).any(), "unwritten row elements"
        assert torch.isnan(rows[:, T:]).all(), "wrote past T into the padding columns"
        err = ((rows[:, :T].double() - want_rows).abs().max() / (scale * 1.4427)).item()
        assert err < TOL, f"rows: max error {err:.2e}"
        # the rows are the fp32 sums times log2(e) in fp32, as the forward kernel scales gc: bit-equal
        B, _, HQ = out.shape
        assert torch.equal(rows[:, :T], (out * 1.4426950408889634).transpose(1, 2).reshape(B * HQ, T))


def _want(g, cu, reverse):
    """fp64 sums (the reference's arithmetic, without its final fp32 cast) and their base-2 rows."""
    B, T, HQ = g.shape
    x = g.double().cpu()
    if cu is None:
        spans = [(b, 0, T) for b in range(B)]
    else:
        cu = cu.tolist()
        spans = [(0, cu[n], cu[n + 1]) for n in range(len(cu) - 1)]
    want = torch.zeros(B, T, HQ, dtype=torch.float64)
    for b, s, e in spans:
        seg = x[b, s:e]
        want[b, s:e] = seg.flip(0).cumsum(0).flip(0) if reverse else seg.cumsum(0)
    return want.to(g.device), (want * 1.4426950408889634).transpose(1, 2).reshape(B * HQ, T).to(g.device)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("B,T,HQ,kind", [
    (3, 1300, 5, "typical"),  # T over several chunks and prefix tiles, not a multiple of either; odd heads
    (2, 257, 20, "forgotten"),  # two head blocks, one token past a chunk
    (1, 63, 16, "near_zero"),
    (2, 1, 4, "typical"),
])
def test_gate_scan_matches_reference(B, T, HQ, kind, reverse):
    gen = torch.Generator().manual_seed(seed := torch.seed() % 2**31)
    print(f"seed={seed}")
    g = _gates(B, T, HQ, gen, kind)
    rows = torch.full((B * HQ, T + 16 - T % 16 + 16), float("nan"), device=DEVICE)
    out = gs.gate_scan(g, reverse=reverse, rows=rows)
    want, want_rows = _want(g, None, reverse)
    _check(out, want, rows, want_rows, T)
    # the reference itself, and without rows
    _check(naive.gate_scan(g, reverse=reverse), want)
    _check(gs.gate_scan(g, reverse=reverse), want)


@pytest.mark.parametrize("reverse", [False, True])
def test_gate_scan_packed_sequences(reverse):
    gen = torch.Generator().manual_seed(seed := torch.seed() % 2**31)
    print(f"seed={seed}")
    lens = [1, 300, 0, 700, 5, 513]  # a length-1 and an empty sequence, spans across chunk edges
    T, HQ = sum(lens), 6
    cu = cu_seqlens_of(lens, DEVICE)
    g = _gates(1, T, HQ, gen, "forgotten")
    rows = torch.full((HQ, T + 16 - T % 16), float("nan"), device=DEVICE)
    out = gs.gate_scan(g, cu, reverse=reverse, rows=rows)
    want, want_rows = _want(g, cu, reverse)
    _check(out, want, rows, want_rows, T)
    ref_rows = torch.full_like(rows, float("nan"))
    _check(naive.gate_scan(g, cu, reverse=reverse, rows=ref_rows), want, ref_rows, want_rows, T)


@pytest.mark.parametrize("reverse", [False, True])
def test_gate_scan_packed_sequences_stay_separate(reverse):
    # a NaN gradient in one packed sequence must not reach the others' sums (a scan over the whole
    # packed row followed by a subtraction, as torch did before the kernel, spreads it)
    gen = torch.Generator().manual_seed(seed := torch.seed() % 2**31)
    print(f"seed={seed}")
    lens, HQ = [300, 5, 600], 3
    cu = torch.tensor([0, 300, 305, 905], dtype=torch.int32, device=DEVICE)
    g = _gates(1, sum(lens), HQ, gen, "typical")
    g[0, 302, 1] = float("nan")
    out = gs.gate_scan(g, cu, reverse=reverse)
    want, _ = _want(g, cu, reverse)
    for s0, s1 in [(0, 300), (305, 905)]:
        _check(out[:, s0:s1], want[:, s0:s1])
    assert torch.isnan(out[0, 300:305, 1]).any()


def test_gate_scan_checks_rows():
    g = torch.zeros(2, 10, 3, device=DEVICE)
    with pytest.raises(ValueError, match="rows"):
        gs.gate_scan(g, rows=torch.empty(6, 8, device=DEVICE))  # fewer columns than T


@needs_cuda
@pytest.mark.parametrize("reverse", [False, True])
def test_gpu_gate_scan_long(reverse):
    gen = torch.Generator().manual_seed(seed := torch.seed() % 2**31)
    print(f"seed={seed}")
    B, T, HQ = 2, 40000, 32
    g = _gates(B, T, HQ, gen, "typical")
    rows = torch.full((B * HQ, T + 16 - T % 16), float("nan"), device=DEVICE)
    out = gs.gate_scan(g, reverse=reverse, rows=rows)
    want, want_rows = _want(g, None, reverse)
    _check(out, want, rows, want_rows, T)
