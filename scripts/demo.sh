#!/usr/bin/env bash
# Set everything up from nothing, then run the CPU demo: GRPO on the embedded model, offline.
# GSM8K=path/to/gsm8k (a folder with train.jsonl and test.jsonl) uses a local copy instead of the hub.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
args=(--config recipes/cpu-demo.yaml)
if [ -n "${GSM8K:-}" ]; then
    args+=(--dataset "$GSM8K")
fi
exec .venv/bin/r1lite train "${args[@]}" "$@"
