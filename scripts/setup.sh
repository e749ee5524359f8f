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

# Fashion-MNIST (configs/fashion_mnist*.yaml, examples/, the study): the official IDX files from Debian's
# dataset-fashion-mnist package. Installed here where this machine can (root with apt-get); otherwise the
# command to run is printed and the tests that need the files say why they skip.
FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -d "$FMNIST" ] && [ "${TAUPS_NO_APT:-0}" != "1" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "installing Debian's dataset-fashion-mnist (Fashion-MNIST into $FMNIST; TAUPS_NO_APT=1 skips this)" >&2
    { timeout 300 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq dataset-fashion-mnist; } >&2 \
      || echo "could not install dataset-fashion-mnist; Fashion-MNIST runs and tests will need it" >&2
  else
    echo "Fashion-MNIST is not installed: sudo apt-get install dataset-fashion-mnist (Debian/Ubuntu), or put" \
         "the four IDX files in a folder and pass task.path=FOLDER" >&2
  fi
fi
