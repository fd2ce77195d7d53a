#!/usr/bin/env bash
# Device call: train and evaluate students on the corpus carried in .corpus/ (the corpus.tar.part-*
# pieces that gpu_corpus.sh sends back, or one corpus.jsonl.gz). Variants train side by side on the
# GPU; each NAME=ARGS pair trains one into $OUT/NAME.* (checkpoint shards + logs in NAME.small.tgz).
# Carry: .corpus (and .snap from scripts/snapshot.sh to run the committed code).
# Usage: gpu_train.sh TRAIN_SECONDS "small=--hidden 256 --layers 4" "base=--hidden 384 --layers 6"
set -euo pipefail
TRAIN_S=$1; shift
ROOT=$PWD
if ls "$ROOT"/.corpus/corpus.tar.part-* >/dev/null 2>&1; then
    rm -rf /tmp/corpus && cat "$ROOT"/.corpus/corpus.tar.part-* | tar -x -C /tmp && CORPUS=/tmp/corpus
else
    CORPUS=$ROOT/.corpus/corpus.jsonl.gz
fi
if [ -f .snap/src.tar ]; then rm -rf /tmp/src && mkdir -p /tmp/src && tar -xf .snap/src.tar -C /tmp/src && cd /tmp/src; fi
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
BACKEND=reference
python3 weights/recipe/check_attn.py && BACKEND=auto
for spec in "$@"; do
    name=${spec%%=*}; args=${spec#*=}; dir=/tmp/student_$name
    mkdir -p "$dir"
    # shellcheck disable=SC2086
    python3 weights/recipe/train.py --corpus "$CORPUS" --out "$dir" --steps 1000000 \
        --seconds "$TRAIN_S" --attn-backend "$BACKEND" $args > "$dir/train_stdout.txt" 2>&1 &
done
wait
for spec in "$@"; do
    name=${spec%%=*}; dir=/tmp/student_$name
    echo "== $name"; grep -E "corpus:|student:|budget|final_held_out" "$dir/train_stdout.txt" || tail -5 "$dir/train_stdout.txt"
    timeout 120 python3 weights/recipe/evaluate.py --student "$dir" --corpus "$CORPUS" --out "$dir/metrics.json" \
        | tail -8 || true
    (cd "$dir" && for f in *.safetensors; do cp "$f" "$OUT/$name.$f"; done
     [ -f model.safetensors.index.json ] && cp model.safetensors.index.json "$OUT/$name.index.json"
     tar -czf "$OUT/$name.small.tgz" --exclude='*.safetensors' --exclude='model.safetensors.index.json' .) || true
done
python3 -c "import gzip,itertools,glob; src=gzip.open(sorted(glob.glob('$CORPUS/*.jsonl.gz') or ['$CORPUS'])[0],'rt'); \
open('$OUT/corpus_sample.jsonl','w').writelines(itertools.islice(src, 200))" || true
ls -la "$OUT"
