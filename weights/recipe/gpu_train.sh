#!/usr/bin/env bash
# Device call 3 of 3: train the student on the corpus (carried back in .corpus/), evaluate it and
# send back the checkpoint (bf16 shards of at most 15 MB) and the logs. Usage: gpu_train.sh SECONDS
set -euo pipefail
SECONDS_TRAIN=${1:-360}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
cat .corpus/corpus.jsonl.gz.part* > /tmp/corpus.jsonl.gz
mkdir -p /tmp/student
python3 weights/recipe/train.py --corpus /tmp/corpus.jsonl.gz --out /tmp/student --steps 100000 \
    --seconds "$SECONDS_TRAIN" 2>&1 | tee /tmp/student/train_stdout.txt
python3 weights/recipe/evaluate.py --student /tmp/student --corpus /tmp/corpus.jsonl.gz --out /tmp/student/metrics.json
cp /tmp/student/*.safetensors /tmp/student/model.safetensors.index.json "$OUT"/ 2>/dev/null || cp /tmp/student/model.safetensors "$OUT"/
tar -C /tmp/student -czf "$OUT/student_small.tgz" --exclude='*.safetensors' --exclude='model.safetensors.index.json' .
ls -la "$OUT"
