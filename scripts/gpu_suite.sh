#!/usr/bin/env bash
# Several GPU scripts in one device call: each runs with its logs in its own folder, all logs come back
# as $OUT/logs.tgz, and each script's output is printed (tables last). Tests: SKIP_TESTS=1 to skip.
#   bash scripts/gpu_suite.sh linear rope decode       (runs scripts/gpu_<name>.sh in turn)
set -uo pipefail
FINAL_OUT=${OUT:-out}; mkdir -p "$FINAL_OUT"
for name in "$@"; do
  echo "################ $name"
  OUT=/tmp/suite/$name bash "scripts/gpu_$name.sh" > "/tmp/suite_$name.txt" 2>&1
  mkdir -p "/tmp/suite/$name"; cp "/tmp/suite_$name.txt" "/tmp/suite/$name/stdout.txt"
  tar -C /tmp/suite -czf "$FINAL_OUT/logs.tgz" .
done
for name in "$@"; do echo "################ $name"; grep -v "Warning\|warn(" "/tmp/suite_$name.txt" | tail -60; done
