"""gatedgen.bench.compiled: the resource lines the GPU scripts print, from a stand-in of Triton's
per-device kernel cache (no GPU needed)."""

from __future__ import annotations

from types import SimpleNamespace

from gatedgen.bench.compiled import compiled_lines


def _kernel(regs, spills, shared, warps, stages, constants):
    meta = SimpleNamespace(shared=shared, num_warps=warps, num_stages=stages)
    return SimpleNamespace(metadata=meta, n_regs=regs, n_spills=spills, src=SimpleNamespace(constants=constants))


def test_one_line_per_specialization():
    good = _kernel(255, 24, 82944, 4, 3, {(1,): 128, (2,): "tf32", (3,): 0.5})
    other = _kernel(128, 0, 1024, 8, 2, {(1,): 64})
    fn = SimpleNamespace(device_caches={0: ({"a": good, "b": other}, None)})
    lines = compiled_lines("dkdv", fn)
    assert lines == [
        "dkdv: regs=255 spills=24 smem=82944 warps=4 stages=3 {(1,): 128, (2,): 'tf32'}",
        "dkdv: regs=128 spills=0 smem=1024 warps=8 stages=2 {(1,): 64}",
    ]


def test_broken_entry_is_reported_not_raised():
    fn = SimpleNamespace(device_caches={0: ({"a": SimpleNamespace()}, None)})
    (line,) = compiled_lines("fwd", fn)
    assert line.startswith("fwd: info failed AttributeError")


def test_nothing_compiled_yet():
    assert compiled_lines("dq", SimpleNamespace()) == []
