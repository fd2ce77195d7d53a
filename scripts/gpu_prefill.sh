#!/usr/bin/env bash
# One device call for the prefill kernel: GPU tests, kernel resource report, benchmark, block sweep.
# Run from the repo root on the device machine (see docs/notes-prefill.md):
#   bash scripts/gpu_prefill.sh [bench args]        logs go to $OUT (or ./out)
# Under 6 minutes by default: the bench takes one T per head layout (--quick; QUICK=0 for every shape,
# then raise BENCH_TIMEOUT), the sweep stops after SWEEP_SECONDS. Limits: TEST_/BENCH_/SWEEP_TIMEOUT.
set -uo pipefail
source scripts/gpu_env.sh
T0=$SECONDS
BENCH_ARGS=("$@")
[ "${QUICK:-1}" = 1 ] && BENCH_ARGS+=(--quick)

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout "${TEST_TIMEOUT:-100}" python3 -m pytest -v -rf --tb=short -n 8 -p no:cacheprovider tests/test_parallel_kernel.py 2>&1 \
    | grep -v -i "benchmark" | tee "$OUT/test.log" | grep -E "FAILED|ERROR|passed|failed|Error" | tail -30
  echo "tests exit: ${PIPESTATUS[0]}"
fi

timeout "${BENCH_TIMEOUT:-170}" python3 - "${BENCH_ARGS[@]}" <<'PY' 2>&1 | tee "$OUT/bench.log"
import json, os, sys
from gatedgen.bench import kernels_prefill as kp
from kernels.attn import parallel as par
rows = kp.run(quick="--quick" in sys.argv, log=lambda r: print({k: (round(v) if isinstance(v, float) else v) for k, v in r.items()}, flush=True))
json.dump(rows, open(os.path.join(os.environ.get("OUT", "out"), "bench.json"), "w"), indent=1)
# compiled kernels: registers, spills, shared memory per specialization
for name, fn in [("fwd", par.parallel_attn_fwd_kernel), ("dkdv", par.parallel_attn_bwd_kernel_dkdv),
                 ("dq", par.parallel_attn_bwd_kernel_dq)]:
    for dev_cache in getattr(fn, "device_caches", {}).values():
        for kern in dev_cache[0].values():
            try:
                c = kern.metadata
                print(f"{name}: regs={kern.n_regs} spills={kern.n_spills} smem={c.shared} warps={c.num_warps} stages={c.num_stages} consts={ {k: v for k, v in kern.src.constants.items() if isinstance(v, (int, str)) and not isinstance(v, bool)} }")
            except Exception as e:  # noqa: BLE001
                print(name, "info failed", e)
print()
print(kp.format_table(rows))
PY

# block-size sweep at T = 4k (forward: gated fwd time; backward: fwd+bwd time with the fwd fixed)
# (the fixed blocks live in kernels/attn/parallel_tuning.py: _BLOCKS[kind][padded D], read through the
# cached _blocks(kind, BK), whose cache is cleared after every change; SWEEP_SECONDS bounds the sweep)
timeout "${SWEEP_TIMEOUT:-60}" python3 - <<'PY' 2>&1 | tee "$OUT/sweep.log"
import os, time, torch, triton, torch.nn.functional as F
from kernels.attn import parallel as par, parallel_tuning as tun
deadline = time.time() + float(os.environ.get("SWEEP_SECONDS", "45"))
for (B, T, H, D) in [(4, 4096, 16, 128), (4, 4096, 32, 64)]:
    q = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn_like(q, requires_grad=True); v = torch.randn_like(q, requires_grad=True)
    g = F.logsigmoid(torch.randn(B, T, H, device="cuda") + 4).requires_grad_(True)
    do = torch.randn_like(q)
    fl = 2.0 * B * H * T * T * D
    default = dict(tun._BLOCKS["fwd"]), dict(tun._BLOCKS["dkdv"]), dict(tun._BLOCKS["dq"])
    for kind, cands in [("fwd", [(128, 64, 4, 3), (128, 32, 4, 4), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 8, 3)]),
                        ("dkdv", [(16, 64, 4, 3), (32, 64, 4, 3), (32, 128, 8, 2), (64, 128, 8, 2), (16, 128, 8, 3), (32, 64, 4, 2)]),
                        ("dq", [(64, 32, 4, 3), (128, 64, 8, 2), (64, 16, 4, 3), (128, 32, 8, 2), (64, 64, 4, 3)])]:
        for c in cands:
            if time.time() > deadline:
                print(f"D={D} {kind} {c}: skipped (SWEEP_SECONDS spent)", flush=True)
                continue
            tun._BLOCKS[kind][D] = c
            tun._blocks.cache_clear()
            try:
                if kind == "fwd":
                    ms = triton.testing.do_bench(lambda: par.parallel_attn(q, k, v, g), warmup=10, rep=40)
                    print(f"D={D} {kind} {c}: {ms:.3f} ms {fl / ms / 1e9:.0f} TFLOP/s", flush=True)
                else:
                    def f():
                        torch.autograd.grad(par.parallel_attn(q, k, v, g), (q, k, v, g), do)
                    ms = triton.testing.do_bench(f, warmup=10, rep=40)
                    print(f"D={D} {kind} {c}: fwd+bwd {ms:.3f} ms {3.5 * fl / ms / 1e9:.0f} TFLOP/s", flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"D={D} {kind} {c}: failed {type(e).__name__}: {str(e)[:120]}", flush=True)
        tun._BLOCKS[kind][D] = default[["fwd", "dkdv", "dq"].index(kind)][D]
        tun._blocks.cache_clear()
PY
echo "=== table (script ran $((SECONDS - T0)) s) ==="
sed -n '/^| H x D/,$p' "$OUT/bench.log"
