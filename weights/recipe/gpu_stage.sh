#!/usr/bin/env bash
# Device call 1 of 3: the teacher GGUF (98 MB) is larger than one call may carry (64 MiB), so its
# first part travels alone and waits in /tmp for call 2, made while the machine is still warm.
set -euo pipefail
mkdir -p /tmp/smolparts && cp .smol_a/part /tmp/smolparts/a && ls -la /tmp/smolparts
