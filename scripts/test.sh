#!/usr/bin/env bash
# Set up and run the test suite. Extra arguments go to pytest (e.g. -m "not slow" for the quick tier).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash scripts/setup.sh | tail -n 1)
"$PY" -m ruff check .
"$PY" -m ruff format --check .
"$PY" -m pytest -q "$@"
