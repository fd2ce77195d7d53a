#!/usr/bin/env bash
# One device call for the skinny GEMM (kernels/gemm/skinny.py, issue 5): GPU tests, then per-call times
# of cuBLAS vs ours at the model's (N, K) and M = 1..32, the MLP's gate/up + SwiGLU three ways (cuBLAS +
# SwiGLU kernel / skinny + SwiGLU kernel / linear_swiglu's fused epilogue), a block-size sweep at M = 1
# and 32, and one decode step's graph replay (135m, B = 1 and 32): GATEDGEN_NO_SKINNY=1, skinny with the
# MLP unfused, and as shipped (skinny + linear_swiglu). Logs to $OUT; the summary is printed last.
#   bash scripts/gpu_linear.sh        (SKIP_TESTS=1 / SKIP_SWEEP=1 / SWEEP_SECONDS=60 to narrow)
set -uo pipefail
source scripts/gpu_env.sh

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout "${TEST_TIMEOUT:-150}" python3 -m pytest -q -x -p no:cacheprovider tests/test_skinny_linear.py 2>&1 \
    | tee "$OUT/test.log" | tail -15
  echo "tests exit: ${PIPESTATUS[0]}"
fi

timeout "${BENCH_TIMEOUT:-240}" python3 scripts/gpu_linear_bench.py 2>&1 | tee "$OUT/bench.log"
echo "bench exit: ${PIPESTATUS[0]}"
