# Sourced by the one-call GPU scripts (run from the repo root on the device machine): $OUT, carried
# wheels (.whl/) on PYTHONPATH, and the device and library versions recorded in $OUT/gpu.txt.
OUT=${OUT:-out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv | tee "$OUT/gpu.txt"
python3 - <<'PY' 2>&1 | tee -a "$OUT/gpu.txt"
import importlib
for name in ("torch", "triton", "transformers", "fla"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as e:  # a peer that is not there is reported, not fatal
        print(name, "not importable:", e.__class__.__name__)
PY
