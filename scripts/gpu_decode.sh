#!/usr/bin/env bash
# One device call for the decode kernel: GPU tests, launch-variant sweep, benchmark vs fla / SDPA.
# Run from the repo root on the device machine (see docs/notes-decode.md):
#   bash scripts/gpu_decode.sh            logs and JSON go to $OUT (or ./out)
# Env: SKIP_TESTS=1, SKIP_SWEEP=1 (then the module defaults are benchmarked), QUICK=1.
set -uo pipefail
source scripts/gpu_env.sh

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -p no:cacheprovider tests/test_decode_kernel.py 2>&1 \
    | tee "$OUT/test.log" | tail -25
  echo "tests exit: ${PIPESTATUS[0]}"
fi

timeout "${BENCH_TIMEOUT:-330}" python3 - <<'PY' 2>&1 | tee "$OUT/bench.log"
import json, os
from gatedgen.bench import kernels_decode as kd
from kernels.attn import decoding
out = os.environ.get("OUT", "out")
import time, torch
x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
t0 = time.time()
while time.time() - t0 < 3:  # bring the clocks up (the first call found the SM clock at 345 MHz)
    x @ x
torch.cuda.synchronize()
del x
res = {"ceilings": kd.ceilings()}
print("ceilings (TB/s):", res["ceilings"])
variant = {}
if os.environ.get("SKIP_SWEEP", "0") != "1":
    sw = kd.sweep()
    sw += kd.sweep(shapes=((1, 32768),), variants={k: v for k, v in kd.VARIANTS.items() if k in ("default", "bcast", "dot64", "dot64-s4", "dot128-w8")}, gated=False)
    res["sweep"] = sw
    best = kd.best_variant([r for r in sw if r["gated"]])
    variant = kd.VARIANTS[best]
    print(kd.format_sweep(sw))
    print("best variant:", best, variant)
rows = kd.run(quick=os.environ.get("QUICK", "0") == "1", variant=variant)
res["rows"], res["variant"] = rows, variant
json.dump(res, open(os.path.join(out, "bench.json"), "w"), indent=1)
for fn in (decoding.decode_split_kernel, decoding.decode_merge_kernel):
    for dev_cache in getattr(fn, "device_caches", {}).values():
        for kern in dev_cache[0].values():
            try:
                c = kern.metadata
                consts = {k: v for k, v in kern.src.constants.items() if isinstance(v, (int, str))}
                print(f"{fn.__name__}: regs={kern.n_regs} spills={kern.n_spills} smem={c.shared} warps={c.num_warps} stages={c.num_stages} {consts}")
            except Exception as e:  # noqa: BLE001
                print(fn.__name__, "info failed", e)
print()
print("variant:", variant or "module defaults")
print(kd.format_table(rows))
PY
