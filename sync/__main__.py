"""python -m sync --config X.yaml --run-dir D: one rank of the synchronous baseline (see sync/loop.py)."""

import sys

from sync.loop import main

if __name__ == "__main__":
    sys.exit(main())
