#!/usr/bin/env bash
# One device call for the RMSNorm fold (kernels.rms_norm_linear: the norm folded into the skinny GEMM,
# issue 5): GPU tests (tests/test_norm_linear.py, then the engine / prefill-graph / skinny GEMM suites the
# fold runs through), per-call times of norm + GEMM vs the fused kernel at the 135M maps, and one decode
# step's graph replay with GATEDGEN_NO_NORM_FOLD=1 and without. Logs to $OUT; the tables come last.
#   bash scripts/gpu_normlinear.sh      (or: bash scripts/gpu_suite.sh normlinear; SKIP_TESTS=1 to skip tests)
set -uo pipefail
source scripts/gpu_env.sh

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout "${TEST_TIMEOUT:-150}" python3 -m pytest -q -x -p no:cacheprovider tests/test_norm_linear.py \
    tests/test_engine.py tests/test_prefill_graph.py tests/test_gpu_model.py tests/test_skinny_linear.py -k "not model_shapes" 2>&1 \
    | tee "$OUT/test.log" | tail -15
  echo "tests exit: ${PIPESTATUS[0]}"
  timeout 60 python3 -m pytest -q -x -p no:cacheprovider tests/test_norm_linear.py -k model_shapes 2>&1 \
    | tee "$OUT/test_shapes.log" | tail -5
  echo "shape tests exit: ${PIPESTATUS[0]}"
fi

timeout "${BENCH_TIMEOUT:-150}" python3 scripts/gpu_normlinear_bench.py 2>&1 | tee "$OUT/bench.log"
echo "bench exit: ${PIPESTATUS[0]}"
