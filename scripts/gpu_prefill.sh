#!/usr/bin/env bash
# One device call for the prefill kernel: GPU tests, kernel resource report, benchmark, block sweep.
# Run from the repo root on the device machine (see docs/notes-prefill.md):
#   bash scripts/gpu_prefill.sh [bench args]        logs go to $OUT (or ./out)
# Under 6 minutes by default: the bench takes one T per head layout (--quick; QUICK=0 for every shape,
# then raise BENCH_TIMEOUT), the sweep stops after SWEEP_SECONDS. Limits: TEST_/BENCH_/SWEEP_TIMEOUT.
# SHORT=1 (~2 minutes): the GPU tests of the parallel kernels, then our kernel alone (SDPA beside it as a
# clock check) at five shapes: 16x128 at T=2048 (B=8) and T=4096 (B=4), 32x64 at T=4096 (B=4) and
# T=16384 (B=1), GQA 32:8x128 T=4096 (B=4); gated and ungated, fwd and fwd+bwd; no fla, no sweep.
# Compare with docs/RESULTS.md (prefill kernel tables) or with a run of the same mode at another commit.
set -uo pipefail
source scripts/gpu_env.sh
T0=$SECONDS
BENCH_ARGS=("$@")
[ "${QUICK:-1}" = 1 ] && BENCH_ARGS+=(--quick)
TESTS=(tests/test_parallel_kernel.py tests/test_parallel_fast.py)

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout "${TEST_TIMEOUT:-120}" python3 -m pytest -v -rf --tb=short -n 8 -p no:cacheprovider "${TESTS[@]}" 2>&1 \
    | grep -v -i "benchmark" | tee "$OUT/test.log" | grep -E "FAILED|ERROR|passed|failed|Error" | tail -30
  echo "tests exit: ${PIPESTATUS[0]}"
fi

if [ "${SHORT:-0}" = 1 ]; then
  timeout "${BENCH_TIMEOUT:-150}" python3 - <<'PY' 2>&1 | tee "$OUT/bench_short.log"
import torch, torch.nn.functional as F
from gatedgen.bench import kernels_prefill as kp
from kernels.attn.parallel import parallel_attn
print("TFLOP/s, bf16, causal (fwd+bwd = 3.5 x fwd FLOPs), do_bench medians; SDPA = ungated clock check")
rows = []
for name, B, T, HQ, H, D in [("16x128", 8, 2048, 16, 16, 128), ("16x128", 4, 4096, 16, 16, 128),
                             ("32x64", 4, 4096, 32, 32, 64), ("32x64", 1, 16384, 32, 32, 64),
                             ("gqa32:8x128", 4, 4096, 32, 8, 128)]:
    torch.manual_seed(0)
    q = torch.randn(B, T, HQ, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = F.logsigmoid(torch.randn(B, T, HQ, device="cuda") + 4).requires_grad_(True)
    do = torch.randn_like(q)
    fl = kp._flops(B, T, HQ, D, None)
    qs, ks, vs = (x.detach().transpose(1, 2).contiguous() for x in (q, k, v))
    sdpa = lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=HQ != H)
    cells = [name, str(B), str(T)]
    for gate in (g, None):
        ins = (q, k, v, g) if gate is not None else (q, k, v)
        fwd = lambda: parallel_attn(q, k, v, gate)
        cells.append(f"{fl / kp._bench(fwd) / 1e9:.0f}")
        cells.append(f"{3.5 * fl / kp._bench(kp._fwd_bwd(fwd, ins, do)) / 1e9:.0f}")
    cells.append(f"{fl / kp._bench(sdpa) / 1e9:.0f}")
    print(" ".join(cells), flush=True)
    rows.append(cells)
    del q, k, v, g, do, qs, ks, vs
    torch.cuda.empty_cache()
print()
print("| H x D | B | T | ours g fwd | ours g f+b | ours fwd | ours f+b | SDPA fwd |")
print("|---|---|---|---|---|---|---|---|")
for c in rows:
    print("| " + " | ".join(c) + " |")
PY
  echo "=== table (SHORT=1, script ran $((SECONDS - T0)) s) ==="
  sed -n '/^| H x D/,$p' "$OUT/bench_short.log"
  exit 0
fi

timeout "${BENCH_TIMEOUT:-170}" python3 - "${BENCH_ARGS[@]}" <<'PY' 2>&1 | tee "$OUT/bench.log"
import json, os, sys
from gatedgen.bench import kernels_prefill as kp
from kernels.attn import parallel as par
rows = kp.run(quick="--quick" in sys.argv, log=lambda r: print({k: (round(v) if isinstance(v, float) else v) for k, v in r.items()}, flush=True))
json.dump(rows, open(os.path.join(os.environ.get("OUT", "out"), "bench.json"), "w"), indent=1)
# compiled kernels: registers, spills, shared memory per specialization
from gatedgen.bench.compiled import print_compiled
print_compiled([("fwd", par.parallel_attn_fwd_kernel), ("dkdv", par.parallel_attn_bwd_kernel_dkdv),
                ("dq", par.parallel_attn_bwd_kernel_dq)])
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
