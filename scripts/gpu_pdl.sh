#!/usr/bin/env bash
# One device call for programmatic dependent launch (PDL) in the decode step: GPU tests of the kernels
# that use it (skinny GEMM, RMSNorm fold, decode attention, cache append) and of the engine and graphs
# that replay them, then one decode step's graph replay with GATEDGEN_NO_PDL=1 and without, per config
# and batch, fold on and off. Logs to $OUT; the table comes last.
#   bash scripts/gpu_pdl.sh          (or: bash scripts/gpu_suite.sh pdl; SKIP_TESTS=1 to skip the tests)
set -uo pipefail
source scripts/gpu_env.sh

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  XDIST=""
  python3 -c "import xdist" 2>/dev/null && XDIST="-n 8"
  timeout "${TEST_TIMEOUT:-200}" python3 -m pytest -q -x -p no:cacheprovider $XDIST tests/test_skinny_linear.py \
    tests/test_norm_linear.py tests/test_decode_kernel.py tests/test_engine.py tests/test_prefill_graph.py \
    tests/test_gpu_model.py 2>&1 | tee "$OUT/test.log" | tail -15
  echo "tests exit: ${PIPESTATUS[0]}"
fi

timeout "${BENCH_TIMEOUT:-200}" python3 - <<'PY' 2>&1 | tee "$OUT/pdl_bench.log"
import os
import torch
from gatedgen.bench.generate import PRESETS, random_model, replay_step_us

rows = []
for name in ("135m", "135m-llama"):
    m = random_model(PRESETS[name], "cuda", torch.bfloat16)
    for B in (1, 32):
        times = {}
        for fold in ("1", "0"):
            for pdl in ("1", "0"):
                os.environ["GATEDGEN_NO_NORM_FOLD"], os.environ["GATEDGEN_NO_PDL"] = fold, pdl
                times[(fold, pdl)] = replay_step_us(m, B)
        rows.append((name, B, times))
        print(name, B, {f"nofold={f} nopdl={p}": round(t) for (f, p), t in times.items()}, flush=True)
    del m
print("\n| config | B | no fold, no PDL us | no fold, PDL us | fold, no PDL us | fold, PDL us | tok/s (fold, PDL) |")
print("|---|---|---|---|---|---|---|")
for name, B, t in rows:
    print(f"| {name} | {B} | {t[('1', '1')]:.0f} | {t[('1', '0')]:.0f} | {t[('0', '1')]:.0f} | {t[('0', '0')]:.0f} | "
          f"{B * 1e6 / t[('0', '0')]:,.0f} |")
PY
echo "bench exit: ${PIPESTATUS[0]}"
