"""The decode bench's same-bytes read kernel (gatedgen/bench/read_ceiling.py) and its table columns.

CPU: the read kernel runs under TRITON_INTERPRET=1 on small, odd-sized bf16 tensors (skipped when
neither it nor CUDA is there); the partials start as NaN so a program that writes nothing shows up.
"""

from __future__ import annotations

import pytest
import torch

from conftest import poisoned, triton_device
from gatedgen.bench import kernels_decode as kd


@pytest.mark.parametrize("loop", ["stride", "range", "none"])
@pytest.mark.parametrize("shape", [(2, 37, 3, 5), (1, 16, 2, 8)])  # 1110 elements (not a multiple), 256
@pytest.mark.parametrize("block, programs_per_sm", [(64, 3), (32, 1), (128, 5)])
def test_read_sum_matches_fp64_sum(loop, shape, block, programs_per_sm):
    device = triton_device()
    from gatedgen.bench import read_ceiling as rc
    from kernels.utils import num_sms

    gen = torch.Generator().manual_seed(block + programs_per_sm + len(loop))
    x = torch.randn(shape, generator=gen).to(torch.bfloat16).to(device)
    y = (torch.randn(shape, generator=gen) + 0.5).to(torch.bfloat16).to(device)
    chunks = -(-x.numel() // block)
    grid = rc.num_programs(x.numel(), loop, block, programs_per_sm, x.device)
    assert grid == (chunks if loop == "none" else min(chunks, programs_per_sm * num_sms(x.device)))
    partial = poisoned(grid, device=device)
    out = rc.read_sum(x, y, partial, loop=loop, block=block, programs_per_sm=programs_per_sm,
                      num_warps=4, num_stages=3)
    assert out.shape == (grid,) and out.data_ptr() == partial.data_ptr()
    assert not torch.isnan(partial).any(), "a program wrote no partial"
    ref = x.double().sum() + y.double().sum()
    # bf16 values are exact in fp32; what remains is fp32 summation order
    bound = 1e-5 * (x.double().abs().sum() + y.double().abs().sum())
    assert abs(partial.double().sum().cpu() - ref.cpu()) <= bound.cpu()


def test_read_sum_rejects_bad_inputs():
    device = triton_device()
    from gatedgen.bench import read_ceiling as rc

    x = torch.zeros(4, 8, dtype=torch.bfloat16, device=device)
    with pytest.raises(ValueError):
        rc.read_sum(x, torch.zeros(4, 9, dtype=torch.bfloat16, device=device))
    with pytest.raises(ValueError):
        rc.read_sum(x, x.t())
    with pytest.raises(ValueError):
        rc.read_sum(x, x, loop="spiral")
    with pytest.raises(ValueError):
        rc.read_sum(x, x, torch.empty(0, device=device), block=16, programs_per_sm=1)


def _row(**extra):
    row = {"N": 1, "T": 32768, "gated": True, "us": 80.0, "graph_us": 64.0, "sdpa_us": 66.0, "err": 3e-3}
    row |= {"tbps": kd._tbps(1, 32768, 80.0), "graph_tbps": kd._tbps(1, 32768, 64.0),
            "sdpa_tbps": kd._tbps(1, 32768, 66.0)}
    return row | extra


def test_format_table_with_and_without_ceiling():
    old = kd.format_table([_row()])
    header, _, line = old.splitlines()
    assert "read ceiling graph us / TB/s" in header and "ours graph / ceiling" in header
    assert header.count("|") == line.count("|")
    assert "— / —" in line

    new = kd.format_table([_row(ceil_us=48.0, ceil_tbps=kd._tbps(1, 32768, 48.0), floor_us=2.5,
                                fla_us=90.0, fla_tbps=kd._tbps(1, 32768, 90.0)), _row(gated=False)])
    header, _, line, old_line = new.splitlines()
    assert header.count("|") == line.count("|") == old_line.count("|")
    cells = [c.strip() for c in line.split("|")]
    assert f"48.0 / {kd._tbps(1, 32768, 48.0):.2f}" in cells and "0.75" in cells  # 48 / 64
    assert "— / —" in old_line


def test_format_ceiling():
    times = {"stride-b8k-w8-pps2": 55.0, "torch.sum": 60.0}
    rows = [{"N": 1, "T": 32768, "ceil_us": 55.0, "ceil_tbps": kd._tbps(1, 32768, 55.0),
             "ceil_variant": "stride-b8k-w8-pps2", "variant_us": times, "floor_us": 2.5, "sum_err": 1e-7}]
    pytest.importorskip("triton")
    table = kd.format_ceiling(rows)
    header, _, line = table.splitlines()
    assert header.count("|") == line.count("|")
    assert "| 1 x 32768 | 134 | 55.0 | 60.0 | 55.0 / " in line and "stride-b8k-w8-pps2" in line


def test_read_ceiling_dict(monkeypatch):
    """read_ceiling's bookkeeping on small CPU tensors, the CUDA graph and the timer replaced by fakes
    (each reader's fake time is its call count, so the readers differ)."""
    device = triton_device()
    from gatedgen.bench import read_ceiling as rc

    calls = []

    def fake_bench(fn):
        fn()
        calls.append(fn)
        return len(calls) / 1e3  # ms

    monkeypatch.setattr(kd, "_bench", fake_bench)
    monkeypatch.setattr(kd, "_graph", lambda fn: fn)
    monkeypatch.setattr(rc, "empty_kernel", type("Empty", (), {"__getitem__": lambda self, g: lambda: None})())
    k = torch.randn(1, 40, 2, 4).to(torch.bfloat16).to(device)
    v = torch.randn(1, 40, 2, 4).to(torch.bfloat16).to(device)
    variants = {"stride": {"loop": "stride", "block": 64, "programs_per_sm": 2},
                "chunk": {"loop": "none", "block": 32, "num_warps": 4}}
    r = rc.read_ceiling(1, 40, variants, kv=(k, v))
    assert r["variant_us"] == {"stride": 1.0, "chunk": 2.0, "torch.sum": 3.0}
    assert r["floor_us"] == 4.0 and r["ceil_us"] == 1.0 and r["ceil_variant"] == "stride"
    assert r["ceil_tbps"] == kd._tbps(1, 40, 1.0) and r["sum_err"] < 1e-5
    assert "| 1 x 40 |" in kd.format_ceiling([r])
