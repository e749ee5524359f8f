#!/usr/bin/env bash
# Install taups and its dependencies (CPU build of torch, pinned in constraints.txt).
# Uses ./.venv when TAUPS_VENV=1, the current Python otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "${TAUPS_VENV:-0}" = "1" ]; then
  [ -d .venv ] || "$PY" -m venv .venv
  PY=.venv/bin/python
fi
"$PY" -m pip install -q -c constraints.txt -e ".[test]"
echo "$PY"
