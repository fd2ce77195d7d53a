#!/usr/bin/env bash
# One device call for RoPE fusion and the prefill fast path (issue 5): GPU tests (RoPE kernel, parallel
# attention fast path and forward, CUDA model vs CPU reference, graph replay of the RoPE model), then
# timings: graph-replayed decode step (135m, 135m-llama; batch 1, 32), prefill host vs wall time
# (T = 128, 2048), host time per parallel_attn / RoPE call. Logs go to $OUT; a table is printed last.
#   bash scripts/gpu_rope.sh            (SKIP_TESTS=1 to skip the tests)
set -uo pipefail
source scripts/gpu_env.sh

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout "${TEST_TIMEOUT:-120}" python3 -m pytest -q -x -p no:cacheprovider tests/test_rope.py tests/test_parallel_fast.py \
    tests/test_gpu_model.py "tests/test_engine.py::test_graph_replay_equals_eager" \
    tests/test_parallel_kernel.py -k "not (parallel_kernel and (backward or gpu_real or int32 or extreme))" 2>&1 \
    | tee "$OUT/test.log" | tail -15
  echo "tests exit: ${PIPESTATUS[0]}"
fi

timeout "${BENCH_TIMEOUT:-150}" python3 scripts/gpu_rope_bench.py 2>&1 | tee "$OUT/bench.log"
