#!/usr/bin/env bash
# One device call after gpu_stage.sh: rebuild the teacher GGUF, convert it, generate the corpus,
# measure the teacher, train and evaluate the student, and send back the checkpoint and logs.
# Carry: .smol_b .gguf_whl. Usage: gpu_all.sh CORPUS_SECONDS TRAIN_SECONDS
set -euo pipefail
GEN_S=${1:-200}
TRAIN_S=${2:-170}
finish() {  # whatever exists goes back, also when a late step fails
    mkdir -p /tmp/student
    cp /tmp/student/*.safetensors /tmp/student/model.safetensors.index.json "$OUT"/ 2>/dev/null || true
    tar -C /tmp/student -czf "$OUT/student_small.tgz" --exclude='*.safetensors' \
        --exclude='model.safetensors.index.json' . 2>/dev/null || true
    if [ -f /tmp/corpus.jsonl.gz ] && [ "$(stat -c %s /tmp/corpus.jsonl.gz)" -lt 16000000 ]; then
        cp /tmp/corpus.jsonl.gz "$OUT"/
    fi
    ls -la "$OUT"
}
trap finish EXIT
[ -f /tmp/smolparts/a ] || { echo "part a is gone (machine was not warm): run gpu_stage.sh again"; exit 3; }
cat /tmp/smolparts/a .smol_b/part > /tmp/smol.gguf
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gguf_whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -m gatedgen convert /tmp/smol.gguf /tmp/teacher
echo "What is the capital of France?" | python3 -m gatedgen chat -m /tmp/teacher -t 0 -n 30 --stats
python3 weights/recipe/make_corpus.py --teacher /tmp/teacher --out /tmp/corpus.jsonl.gz --seconds "$GEN_S" \
    --batch 256 --max-tokens 400 2>&1 | tee "$OUT/corpus_log.txt"
mkdir -p /tmp/student
python3 weights/recipe/evaluate.py --teacher /tmp/teacher --corpus /tmp/corpus.jsonl.gz --out /tmp/student/teacher_metrics.json
BACKEND=reference
python3 weights/recipe/check_attn.py 2>&1 | tee /tmp/student/check_attn.txt && BACKEND=auto
python3 weights/recipe/train.py --corpus /tmp/corpus.jsonl.gz --out /tmp/student --steps 100000 \
    --layers 6 --seconds "$TRAIN_S" --attn-backend "$BACKEND" 2>&1 | tee /tmp/student/train_stdout.txt
python3 weights/recipe/evaluate.py --student /tmp/student --corpus /tmp/corpus.jsonl.gz --out /tmp/student/metrics.json
python3 -c "import gzip,itertools; src=gzip.open('/tmp/corpus.jsonl.gz','rt'); \
open('/tmp/student/corpus_sample.jsonl','w').writelines(itertools.islice(src, 200))"
