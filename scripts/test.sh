#!/usr/bin/env bash
# Set everything up from nothing, then run the whole test suite (CPU only, a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The report's browser test renders report.html in Debian's Chromium (playwright drives it, never downloads one).
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    { apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; } >/dev/null 2>&1 ||
        echo "Chromium could not be installed: the report's browser test will be skipped"
fi
.venv/bin/python -m ruff check src tests benchmarks
.venv/bin/python -m ruff format --check src tests benchmarks
exec .venv/bin/python -m pytest -q "$@"
