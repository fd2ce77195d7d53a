#!/usr/bin/env bash
# Freeze the committed code for a device call: .snap/src.tar holds HEAD's code (no weights), so a
# call runs what was committed even while the working tree has edits in progress.
# On the device: mkdir -p /tmp/src && tar -xf .snap/src.tar -C /tmp/src && cd /tmp/src
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .snap
git archive --format=tar HEAD gatedgen kernels scripts tests weights/recipe pyproject.toml README.md > .snap/src.tar
echo "snapshot of $(git rev-parse --short HEAD): $(du -h .snap/src.tar | cut -f1)"
