#!/usr/bin/env bash
# One device call for the decode kernel: GPU tests, the partial-merge sweep (second kernel vs merge
# fused into the split kernel, graph-replayed, beside SDPA), the cache-append grid sweep, then the
# table vs fla / SDPA with the fastest merge variant, each shape beside its same-bytes read ceiling
# (gatedgen/bench/read_ceiling.py). Run from the repo root on the device machine
# (see docs/notes-decode.md):
#   bash scripts/gpu_decode.sh            logs and JSON go to $OUT (or ./out); at most ~4.5 minutes (TEST_TIMEOUT=100 s, BENCH_TIMEOUT=170 s caps)
# Env: SKIP_TESTS=1; FULL_TESTS=1 (every decode/append test, not only the GPU, fused and append
# ones); SWEEP=1 (also the older launch-variant sweep, eager times); FULL=1 (final table at all five
# shapes; default: three); CEILING=1 (also the read ceiling's table, every reader, at all five shapes).
set -uo pipefail
source scripts/gpu_env.sh

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  XDIST=""
  python3 -c "import xdist" 2>/dev/null && XDIST="-n 8"
  FILTER="gpu or graph or fused or append or update"
  [ "${FULL_TESTS:-0}" = 1 ] && FILTER="not no_such_test"
  timeout "${TEST_TIMEOUT:-100}" python3 -m pytest -q -rf $XDIST -p no:cacheprovider \
    tests/test_decode_kernel.py tests/test_fused_ops.py::test_append_kv -k "$FILTER" 2>&1 | tee "$OUT/test.log" | tail -25
  echo "tests exit: ${PIPESTATUS[0]}"
fi

timeout "${BENCH_TIMEOUT:-170}" python3 - <<'PY' 2>&1 | tee "$OUT/bench.log"
import json, os, time
import torch
from gatedgen.bench import kernels_decode as kd
from kernels.attn import decoding
out = os.environ.get("OUT", "out")
res = {}
def save():
    json.dump(res, open(os.path.join(out, "bench.json"), "w"), indent=1)
x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
t0 = time.time()
while time.time() - t0 < 3:  # bring the clocks up (the first call found the SM clock at 345 MHz)
    x @ x
torch.cuda.synchronize()
del x
res["ceilings"] = kd.ceilings()
print("ceilings (TB/s):", res["ceilings"], flush=True)
if os.environ.get("CEILING", "0") == "1":  # same-bytes read ceiling: K+V-sized reads, graph-replayed
    t0 = time.time()
    res["read_ceiling"] = [kd.read_ceiling(N, T) for N, T in [(1, 4096), (1, 32768), (1, 131072), (8, 8192), (32, 4096)]]
    save()
    ceiling_table = kd.format_ceiling(res["read_ceiling"])
    print(ceiling_table, f"\n(read ceiling {time.time() - t0:.0f} s)", flush=True)
if os.environ.get("SWEEP", "0") == "1":
    res["sweep"] = kd.sweep()
    print(kd.format_sweep(res["sweep"]), flush=True)
# partial merge: two kernels vs fused, graph-replayed, at the issue's shapes (gated), + 1 x 4096 ungated
t0 = time.time()
merge = kd.merge_sweep() + kd.merge_sweep(shapes=[(1, 4096)], gated=False)
res["merge"] = merge; save()
merge_table = kd.format_merge(merge)
print(merge_table, f"\n(merge sweep {time.time() - t0:.0f} s)", flush=True)
best = kd.best_merge_variant([r for r in merge if r["gated"]])
print("best merge variant (geometric mean of graph times, gated):", best, kd.MERGE_VARIANTS[best], flush=True)
t0 = time.time()
res["append"] = kd.append_sweep(); save()
append_table = kd.format_append(res["append"])
print(append_table, f"\n(append sweep {time.time() - t0:.0f} s)", flush=True)
variant = kd.MERGE_VARIANTS[best]
rows = kd.run(quick=os.environ.get("FULL", "0") != "1", variant=variant)
res["rows"], res["variant"] = rows, variant; save()
from gatedgen.bench.compiled import print_compiled
from kernels.attn import decoding_kernels as dk
print_compiled([(fn.__name__, fn) for fn in (dk.decode_split_kernel, dk.decode_merge_kernel, dk.append_kv_kernel)])
print("\ncache append (9:3 heads, D=64, bf16, logits; graph-replayed us):")
print(append_table)
print("\npartial merge (gated unless g=no; graph-replayed us, TB/s of K+V, [NS splits]):")
print(merge_table)
if "read_ceiling" in res:
    print("\nsame-bytes read ceiling (graph-replayed us of K+V-sized reads; floor = empty kernel):")
    print(ceiling_table)
print("\nvariant:", best, variant)
print(kd.format_table(rows))
PY
