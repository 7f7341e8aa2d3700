#!/usr/bin/env bash
# Set everything up from nothing, then run the CPU demo on the embedded model, offline:
#   1. supervised warm-up (cold start) -> runs/cpu-sft/adapter
#   2. GRPO from it                     -> runs/cpu-demo/{metrics.jsonl,samples.jsonl,adapter/}
#   3. before/after evaluation on 100 held-out GSM8K test questions -> runs/cpu-demo/eval.{json,md}
#   4. training report                  -> runs/cpu-demo/report/report.{md,html}
#   5. export                           -> runs/cpu-demo/export/{merged/,cpu-demo-f16.gguf,Modelfile}
# GSM8K=path/to/gsm8k (a folder with train.jsonl and test.jsonl) uses a local copy instead of the hub.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
data=()
if [ -n "${GSM8K:-}" ]; then
    data=(--dataset "$GSM8K")
fi
r1lite=.venv/bin/r1lite
# --overwrite true: running the demo again replaces the earlier demo's runs instead of refusing to mix them.
$r1lite sft --config recipes/cpu-sft.yaml --overwrite true "${data[@]}"
$r1lite train --config recipes/cpu-demo.yaml --overwrite true "${data[@]}" "$@"
$r1lite eval --adapter runs/cpu-demo/adapter --baseline --max_eval_samples 100 --max_completion_length 256 \
    --output runs/cpu-demo/eval.json "${data[@]}"
$r1lite report runs/cpu-demo
$r1lite export runs/cpu-demo --merged --gguf --overwrite true
