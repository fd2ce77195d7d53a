#!/usr/bin/env bash
# Set up gatedgen in .venv (idempotent). On a machine without a GPU, torch comes from the CPU
# wheel (torch==2.13.0); nothing here pulls a CUDA build of torch onto a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
quiet() { grep -v "is ignored: it is neither" || true; }  # this machine's pip config notes missing mirrors
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    "${PIP[@]}" "torch==${TORCH_VERSION:-2.13.0}" 2>&1 | quiet
fi
# Extras: triton (kernels; CPU runs them under TRITON_INTERPRET=1), test (pytest, hypothesis,
# transformers as an oracle), gguf (gatedgen convert). torch is already satisfied, so pip installs
# no other build of it.
"${PIP[@]}" -e ".[triton,test,gguf]" 2>&1 | quiet
.venv/bin/python -c "import gatedgen, kernels; assert kernels.GATEDGEN_KERNELS" 
