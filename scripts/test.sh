#!/usr/bin/env bash
# Set up and run the test suite. Extra arguments go to pytest (e.g. -m "not slow" for the quick tier).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash scripts/setup.sh | tail -n 1)
"$PY" -m ruff check .
"$PY" -m ruff format --check .
"$PY" -m mypy  # the packages and settings under [tool.mypy] in pyproject.toml
# Test processes in parallel (pytest-xdist): most tests wait on sockets and child processes, so 3 keep 2
# cores busy (the full suite: ~9 min with 3, ~15 min one at a time). TAUPS_TEST_WORKERS=0 runs them in one.
"$PY" -m pytest -q -n "${TAUPS_TEST_WORKERS:-3}" "$@"
