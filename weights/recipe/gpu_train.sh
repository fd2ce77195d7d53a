#!/usr/bin/env bash
# Device call: train and evaluate students on a corpus carried in .corpus/corpus.jsonl.gz (made by
# gpu_all.sh); each NAME=ARGS pair trains one variant into $OUT/NAME.* (checkpoint shards + logs).
# Usage: gpu_train.sh TRAIN_SECONDS "small=--hidden 256 --layers 4" "base=--hidden 384 --layers 6"
set -euo pipefail
TRAIN_S=$1; shift
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
BACKEND=reference
python3 weights/recipe/check_attn.py && BACKEND=auto
for spec in "$@"; do
    name=${spec%%=*}; args=${spec#*=}; dir=/tmp/student_$name
    mkdir -p "$dir"
    # shellcheck disable=SC2086
    python3 weights/recipe/train.py --corpus .corpus/corpus.jsonl.gz --out "$dir" --steps 100000 \
        --seconds "$TRAIN_S" --attn-backend "$BACKEND" $args 2>&1 | tee "$dir/train_stdout.txt" | tail -4
    python3 weights/recipe/evaluate.py --student "$dir" --corpus .corpus/corpus.jsonl.gz --out "$dir/metrics.json" \
        | tail -8 || true
    (cd "$dir" && for f in *.safetensors; do cp "$f" "$OUT/$name.$f"; done
     [ -f model.safetensors.index.json ] && cp model.safetensors.index.json "$OUT/$name.index.json"
     tar -czf "$OUT/$name.small.tgz" --exclude='*.safetensors' --exclude='model.safetensors.index.json' .) || true
done
ls -la "$OUT"
