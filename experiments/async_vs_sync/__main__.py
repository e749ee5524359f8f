"""Async (APAM) against sync (all-reduce AMSGrad), issue 5: python -m experiments.async_vs_sync [--quick]

1. Straggler: digits MLP, 4 workers, rank 3 computes 4x slower (experiments/async_vs_sync/config.yaml). For seeds
   0, 1, 2 the two modes run interleaved (async s0, sync s0, async s1, ...), each until the same number
   of gradients (async: 3000 pushes; sync: 750 steps of 4); time to 95% test accuracy and final accuracy.
   Expected: async reaches 95% in clearly less wall time; the final accuracies within half a point.
2. Learning rate: the same setup at lr 1e-3, 3e-3, 1e-2 for each mode on other seeds (100, 101); each
   mode's fastest lr to 95% is then run on seeds 0, 1, 2 ("tuned"), since a sync step averages N
   gradients and may take a larger lr.
3. Scaling: 1, 2, 4, 8 workers, both modes, 50 ms simulated compute per gradient
   (experiments/async_vs_sync/scaling.yaml), 40 s each: gradients/s against the ideal, time to 95% against
   the 1-worker time / N.

Every run is its own launcher command (experiments/async_vs_sync/runs.py). The runs are grouped in batches
of under 10 minutes each, so a shared machine can run them one batch at a time:
    python -m experiments.async_vs_sync --batches straggler           (a new folder runs/async_vs_sync-*)
    python -m experiments.async_vs_sync --into runs/async_vs_sync-X --batches lr_grid-100
    python -m experiments.async_vs_sync --report-only runs/async_vs_sync-X
Without --batches every batch runs, in order. The report is written after every invocation from
whatever the folder holds, into the folder itself: async_vs_sync.md and img/async_vs_sync_*.png; --out DIR
writes those into DIR instead (--out docs/results replaces the committed report, which records measured
runs: never do that with a --quick run).
"""

from __future__ import annotations

import argparse
import sys

from experiments.async_vs_sync.plan import FULL, QUICK, batch_specs
from experiments.common.report import report_folder
from experiments.common.runs import invoke, outcome, run_batches, study_parser

NAME = "async_vs_sync"


def parser() -> argparse.ArgumentParser:
    return study_parser(NAME, __doc__, "one seed, 400 gradients, 1 and 2 workers (a smoke test)", FULL.batches())


def main(argv: list[str] | None = None) -> int:
    inv = invoke(NAME, parser(), argv, (FULL, QUICK))
    failed = run_batches(NAME, inv, argv, lambda batch: batch_specs(inv.plan, batch, inv.base))
    from experiments.async_vs_sync.report import write_report  # matplotlib only when a report is written

    return outcome(write_report(inv.plan, inv.base, report_folder(inv.args.out, inv.base), inv.quick), inv.base, failed)


if __name__ == "__main__":
    sys.exit(main())
