#!/usr/bin/env bash
# One device call for end-to-end generation: GPU tests (engine, fused ops), graph-replay step
# times, then `gatedgen bench generate` (ours beside fla / HF transformers). Logs go to $OUT.
#   bash scripts/gpu_generate.sh            (SKIP_TESTS=1 / SKIP_BENCH=1 / BENCH_ARGS=... to narrow)
set -uo pipefail
source scripts/gpu_env.sh

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout "${TEST_TIMEOUT:-200}" python3 -m pytest -q -x -p no:cacheprovider tests/test_engine.py tests/test_fused_ops.py 2>&1 \
    | tee "$OUT/test.log" | tail -25
  echo "tests exit: ${PIPESTATUS[0]}"
fi

# GPU time of one replayed decode step (no host sync between replays), to separate kernel time from host time
timeout 120 python3 - <<'PY' 2>&1 | tee "$OUT/replay.log"
import torch
from gatedgen.bench.generate import PRESETS, random_model
from gatedgen.engine import Decoder
from gatedgen.sampling import SamplingParams
p = SamplingParams(temperature=0)
for name in ("135m", "135m-nogate", "135m-llama"):
    m = random_model(PRESETS[name], "cuda", torch.bfloat16)
    for B in (1, 32):
        c = m.new_cache(B, 1024); c.seqlens.fill_(192); c.lengths = [192] * B
        d = Decoder(m, c); d.sampler(p); d.capture(p)
        g = d._graphs[next(iter(d._graphs))]
        for _ in range(5): g.graph.replay()
        c.seqlens.fill_(192)
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(100): g.graph.replay()
        e1.record(); torch.cuda.synchronize()
        print(f"replay {name} B={B}: {e0.elapsed_time(e1) / 100 * 1e3:.0f} us/step")
    del m
PY

if [ "${SKIP_BENCH:-0}" != 1 ]; then
  timeout "${BENCH_TIMEOUT:-330}" python3 -m gatedgen bench generate --config 135m --config 135m-nogate --config 135m-llama \
    --batch 1 --batch 32 --prompt-len 128 --new-tokens 128 --prefill-len 2048 ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
fi
