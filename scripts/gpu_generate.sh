#!/usr/bin/env bash
# One device call for end-to-end generation: GPU tests (engine, fused ops), graph-replay step
# times, then `gatedgen bench generate` (ours beside fla / HF transformers). Logs go to $OUT.
#   bash scripts/gpu_generate.sh            (SKIP_TESTS=1 / SKIP_BENCH=1 / BENCH_ARGS=... to narrow)
set -uo pipefail
source scripts/gpu_env.sh

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout "${TEST_TIMEOUT:-200}" python3 -m pytest -q -x -p no:cacheprovider tests/test_engine.py tests/test_fused_ops.py tests/test_prefill_graph.py 2>&1 \
    | tee "$OUT/test.log" | tail -25
  echo "tests exit: ${PIPESTATUS[0]}"
fi

# GPU time of one replayed decode step (no host sync between replays), to separate kernel time from host time
timeout 120 python3 - <<'PY' 2>&1 | tee "$OUT/replay.log"
import torch
from gatedgen.bench.generate import PRESETS, random_model, replay_step_us
for name in ("135m", "135m-nogate", "135m-llama"):
    m = random_model(PRESETS[name], "cuda", torch.bfloat16)
    for B in (1, 32):
        print(f"replay {name} B={B}: {replay_step_us(m, B):.0f} us/step")
    del m
PY

# Graphed first prefill (gatedgen/prefill_graph.py): per bucket the eager pass (host wall time), the
# graphed prefill (host wall time incl. the ids copy) and the replay alone (GPU events); then a
# Session's TTFT at a 128-token prompt (new prompt each call: the graphed first turn) vs graphs off.
timeout 150 python3 - <<'PY' 2>&1 | tee "$OUT/prefill_graph.log"
import os, statistics, time
import torch
from gatedgen.bench.generate import PRESETS, random_model
from gatedgen.engine import fuse_projections
from gatedgen.generate import GenerationSettings, Session
from gatedgen.prefill_graph import PrefillGraphs
from gatedgen.sampling import SamplingParams

class Tok:  # Session needs EOS ids and a streaming detokenizer only
    eos_token_ids = ()
    def stream(self):
        class S:
            push = staticmethod(lambda t: ""); flush = staticmethod(lambda: "")
        return S()

def wall(fn, n=10):
    ts = []
    for _ in range(n + 1):
        torch.cuda.synchronize(); t0 = time.perf_counter(); fn(); torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts[1:])

rows = []
for name in ("135m", "135m-llama"):
    m = fuse_projections(random_model(PRESETS[name], "cuda", torch.bfloat16))
    V = m.cfg.vocab_size
    for T in (16, 128, 2048):
        cache = m.new_cache(1, 2049)
        ids = torch.randint(0, V, (T,)).tolist(); x = torch.tensor([ids], device="cuda")
        def eager():
            cache.reset()
            with torch.inference_mode(): m(x, cache, mode="prefill", last_only=True)
        t_eager = wall(eager)
        cache.reset(); g = PrefillGraphs(m, cache); g.capture([T])
        def graphed():
            cache.reset(); g.prefill(ids)
        t_graph = wall(graphed)
        graph = g._graphs[T][0]
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(20): graph.replay()
        e1.record(); torch.cuda.synchronize(); cache.reset()
        t_gpu = e0.elapsed_time(e1) / 20 / 1e3
        rows.append(f"| {name} | prefill T={T} | {t_eager*1e3:.2f} | {t_graph*1e3:.2f} | {t_gpu*1e3:.2f} | "
                    f"{T/t_eager:,.0f} / {T/t_graph:,.0f} tok/s |")
        print(rows[-1], flush=True)
    settings = GenerationSettings(max_tokens=1, sampling=SamplingParams(temperature=0), ignore_eos=True)
    for graphs in ("1", "0"):
        os.environ["GATEDGEN_NO_GRAPH"] = "0" if graphs == "1" else "1"
        s = Session(m, Tok(), 4096)
        ttfts = []
        for i in range(12):
            ids = torch.randint(0, V, (128,)).tolist()
            r = list(s.generate(ids, settings))[-1]
            ttfts.append(r.stats.ttft_seconds)
        t = statistics.median(ttfts[2:])
        rows.append(f"| {name} | Session TTFT, 128-token prompt, graphs {'on' if graphs == '1' else 'off'} | - | {t*1e3:.2f} | - | - |")
        print(rows[-1], flush=True)
    os.environ.pop("GATEDGEN_NO_GRAPH")
    del m
print("| config | what | eager ms | graphed / Session ms | replay GPU ms | eager / graphed |")
print("|---|---|---|---|---|---|")
print("\n".join(rows))
PY

if [ "${SKIP_BENCH:-0}" != 1 ]; then
  timeout "${BENCH_TIMEOUT:-330}" python3 -m gatedgen bench generate --config 135m --config 135m-nogate --config 135m-llama \
    --batch 1 --batch 32 --prompt-len 128 --new-tokens 128 --prefill-len 2048 ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
fi
