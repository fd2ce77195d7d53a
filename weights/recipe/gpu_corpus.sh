#!/usr/bin/env bash
# Device call 2 of 3: rebuild the GGUF, convert it with gatedgen, generate the corpus with the
# teacher (batched generation, CUDA graphs), measure the teacher on the held-out records, and send
# the corpus back in parts of at most 15 MB. Carry: .smol_b .gguf_whl. Usage: gpu_corpus.sh SECONDS
set -euo pipefail
SECONDS_GEN=${1:-400}
[ -f /tmp/smolparts/a ] || { echo "part a is gone (machine was not warm): run gpu_stage.sh again"; exit 3; }
cat /tmp/smolparts/a .smol_b/part > /tmp/smol.gguf
echo "b179c9523d0e6a0f  expected sha256 prefix"; sha256sum /tmp/smol.gguf | cut -c1-16
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gguf_whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -m gatedgen convert /tmp/smol.gguf /tmp/teacher
echo "What is the capital of France?" | python3 -m gatedgen chat -m /tmp/teacher -t 0 -n 30 --stats
python3 weights/recipe/make_corpus.py --teacher /tmp/teacher --out /tmp/corpus.jsonl.gz --seconds "$SECONDS_GEN" \
    --batch 256 --max-tokens 320 2>&1 | tee "$OUT/corpus_log.txt"
python3 weights/recipe/evaluate.py --teacher /tmp/teacher --corpus /tmp/corpus.jsonl.gz --out "$OUT/teacher_metrics.json"
split -b 15000000 -d /tmp/corpus.jsonl.gz "$OUT/corpus.jsonl.gz.part"
ls -la "$OUT"
