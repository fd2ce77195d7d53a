"""The layer-stream decode benchmark (gatedgen/bench/decode_stream.py): per-layer arithmetic and the table,
on CPU with the timing faked; the GPU run is `gatedgen bench kernels --part decode --layers 8`."""

from __future__ import annotations

from gatedgen.bench import decode_stream as ds
from gatedgen.bench import kernels_decode as kd


def test_layer_stream_divides_by_layers(monkeypatch):
    # the graph of `layers` calls is timed once per replay; the row reports one layer
    monkeypatch.setattr(ds, "_ours_us", lambda N, T, layers, gated, seed: 800.0 / layers)
    monkeypatch.setattr(ds, "_sdpa_us", lambda N, T, layers, seed: 1000.0 / layers)
    monkeypatch.setattr(ds, "_fla_us", lambda N, T, layers, gated, seed: 16000.0 / layers)
    monkeypatch.setattr(ds.torch.cuda, "empty_cache", lambda: None)
    row = ds.layer_stream(1, 32768, layers=8, gated=True)
    assert row["us"] == 100.0 and row["sdpa_us"] == 125.0 and row["fla_us"] == 2000.0
    assert row["tbps"] == kd._tbps(1, 32768, 100.0) and row["sdpa_tbps"] == kd._tbps(1, 32768, 125.0)
    # without fla (not importable, or not asked for): no fla cells
    row = ds.layer_stream(1, 32768, layers=8, gated=True, fla=False)
    assert row["fla_us"] is None and "fla_tbps" not in row


def test_format_table():
    rows = [{"N": 1, "T": 4096, "gated": g, "layers": 8, "us": 10.0, "sdpa_us": 15.0,
             "tbps": kd._tbps(1, 4096, 10.0), "sdpa_tbps": kd._tbps(1, 4096, 15.0), "fla_us": None}
            for g in (True, False)]
    rows[0] |= {"fla_us": 250.0, "fla_tbps": kd._tbps(1, 4096, 250.0)}
    header, _, yes, no = ds.format_table(rows).splitlines()
    assert header.count("|") == yes.count("|") == no.count("|")
    cells = [c.strip() for c in yes.split("|")]
    assert cells[1:4] == ["1 x 4096", "yes", "8"] and cells[-3:-1] == ["1.50", "25.0"]
    assert f"10.0 / {kd._tbps(1, 4096, 10.0):.2f}" in cells and f"250 / {kd._tbps(1, 4096, 250.0):.2f}" in cells
    assert "| no |" in no and no.rstrip(" |").endswith("—")


def test_run_shapes(monkeypatch):
    seen = []
    monkeypatch.setattr(ds, "layer_stream", lambda N, T, layers, gated: seen.append((N, T, layers, gated)) or {})
    assert len(ds.run(4)) == 2 * len(kd.SHAPES)
    assert {(N, T) for N, T, _, _ in seen} == set(kd.SHAPES) and {x[2] for x in seen} == {4}
    seen.clear()
    ds.run(2, quick=True)  # the shapes of kernels_decode's quick table
    assert [(N, T) for N, T, _, g in seen if g] == kd.SHAPES[:2] + kd.SHAPES[3:4]
