#!/usr/bin/env bash
# Device call 2 of 2 (after gpu_stage.sh, while the machine is warm): rebuild and convert the teacher,
# check it, generate the corpus with continuous batching, measure the teacher on the held-out records.
# Carry: .smol_b .gguf_whl .snap (scripts/snapshot.sh). Usage: gpu_corpus.sh GEN_SECONDS [BATCH]
# Back in $OUT: corpus.tar.part-* (cat them | tar -x gives corpus/), corpus_log.txt, teacher_metrics.json.
set -euo pipefail
SEED=${SEED:-0}
GEN_S=${1:-300}; BATCH=${2:-256}
ROOT=$PWD
finish() {
    if [ -d /tmp/corpus ]; then
        tar -C /tmp -cf - corpus | split -b 15000000 - "$OUT/corpus.tar.part-"
    fi
    ls -la "$OUT"
}
trap finish EXIT
[ -f /tmp/smolparts/a ] || [ -f /tmp/teacher/config.json ] || { echo "part a is gone (machine was not warm): run gpu_stage.sh again"; exit 3; }
[ -f /tmp/teacher/config.json ] || cat /tmp/smolparts/a .smol_b/part > /tmp/smol.gguf
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gguf_whl/*.whl
if [ -f .snap/src.tar ]; then rm -rf /tmp/src && mkdir -p /tmp/src && tar -xf .snap/src.tar -C /tmp/src && cd /tmp/src; fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
[ -f /tmp/teacher/config.json ] || python3 -m gatedgen convert /tmp/smol.gguf /tmp/teacher
echo "What is the capital of France?" | python3 -m gatedgen chat -m /tmp/teacher -t 0 -n 30 --stats
[ "$SEED" != 0 ] || timeout 100 python3 -m pytest -q -x -p no:cacheprovider tests/test_batch_stream.py 2>&1 | tail -3
rm -rf /tmp/corpus
python3 weights/recipe/make_corpus.py --teacher /tmp/teacher --out /tmp/corpus --seconds "$GEN_S" \
    --batch "$BATCH" --max-tokens 400 --seed "$SEED" 2>&1 | tee "$OUT/corpus_log.txt"
timeout 90 python3 weights/recipe/evaluate.py --teacher /tmp/teacher --corpus /tmp/corpus \
    --out "$OUT/teacher_metrics.json" | tail -4 || true
du -sh /tmp/corpus
