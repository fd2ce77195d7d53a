#!/usr/bin/env bash
# Set up, then run the whole test suite on this machine (CPU: Triton kernels run in the interpreter).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    export TRITON_INTERPRET=1
fi
exec .venv/bin/python -m pytest tests -q -ra "$@"
