"""Fashion-MNIST through the runtime (issue 12, items 4 and 5): python -m experiments.fashion_mnist [--quick]

1. dense      APAM, 4 workers, the <100k-parameter CNN of configs/fashion_mnist.yaml: test accuracy against wall
              time; the target is 0.925 on the whole test set.
2. ef21       the same with EF21-SGDM Top-K 1% pushes (configs/fashion_mnist_ef21_sgdm.yaml): within 1 point of
              dense, with at least 50x fewer uplink bytes.
3. straggler  rank 3 computes 4x slower: async (APAM) against sync (all-reduce AMSGrad), time to 0.90.
4. wide       a 1-5M-parameter CNN (configs/fashion_mnist_wide.yaml), dense and EF21-SGDM, short runs: updates/s,
              bytes and accuracy where communication matters.

Every run is its own launcher command, into <experiment>/<batch>/<run>/. Each batch takes under ~15 minutes
of a 2-core machine, so a shared machine can run them one at a time:
    python -m experiments.fashion_mnist --batches dense,ef21        (a new folder runs/fashion_mnist-*)
    python -m experiments.fashion_mnist --into runs/fashion_mnist-X --batches straggler
    python -m experiments.fashion_mnist --report-only runs/fashion_mnist-X
Without --batches every batch runs, in order. The report is written after every invocation from whatever the
folder holds, into the folder itself: fashion_mnist.md and img/fashion_mnist_*.png; --out DIR writes those into
DIR instead (--out docs/results replaces the committed report, which records measured runs: never do that
with a --quick run).
"""

from __future__ import annotations

import argparse
import sys

from experiments.common.report import report_folder
from experiments.common.runs import invoke, outcome, run_batches, study_parser
from experiments.fashion_mnist.plan import FULL, QUICK, batch_specs

NAME = "fashion_mnist"


def parser() -> argparse.ArgumentParser:
    return study_parser(NAME, __doc__, "every run for a few dozen updates (a smoke test)", FULL.batches())


def main(argv: list[str] | None = None) -> int:
    inv = invoke(NAME, parser(), argv, (FULL, QUICK))
    failed = run_batches(NAME, inv, argv, lambda batch: batch_specs(inv.plan, batch))
    from experiments.fashion_mnist.report import write_report  # matplotlib only when a report is written

    return outcome(write_report(inv.plan, inv.base, report_folder(inv.args.out, inv.base), inv.quick), inv.base, failed)


if __name__ == "__main__":
    sys.exit(main())
