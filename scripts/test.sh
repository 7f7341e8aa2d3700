#!/usr/bin/env bash
# Set everything up from nothing, then run the whole test suite (CPU only, a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m ruff check src tests benchmarks
.venv/bin/python -m ruff format --check src tests benchmarks
exec .venv/bin/python -m pytest -q "$@"
