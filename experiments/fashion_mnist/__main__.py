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
import shlex
import sys
import time
from pathlib import Path

from experiments.common.report import add_out_option, report_folder
from experiments.common.sweeps import shown
from experiments.fashion_mnist.plan import FULL, INVOCATIONS, QUICK, batch_specs
from experiments.fashion_mnist.runs import run_specs

NAME = "fashion_mnist"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"python -m experiments.{NAME}", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="every run for a few dozen updates (a smoke test)")
    ap.add_argument("--batches", help="comma-separated batches to run (default: all): " + ", ".join(FULL.batches()))
    ap.add_argument("--into", type=Path, metavar="DIR", help="run into this experiment folder (continue it)")
    add_out_option(ap)
    ap.add_argument("--runs", type=Path, default=Path("runs"), help="parent folder of new experiment folders")
    ap.add_argument("--report-only", type=Path, metavar="DIR", help="rebuild the report from an experiment folder")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    plan = QUICK if args.quick else FULL
    failed = 0
    if args.report_only:
        base = args.report_only
        plan = QUICK if args.quick or base.name.startswith(f"{NAME}-quick-") else FULL
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = args.into or args.runs / f"{NAME}{'-quick' if args.quick else ''}-{stamp}"
        batches = args.batches.split(",") if args.batches else plan.batches()
        unknown = [b for b in batches if b not in plan.batches()]
        if unknown:
            ap.error(f"unknown batch {unknown[0]!r}; this plan has: {', '.join(plan.batches())}")
        base.mkdir(parents=True, exist_ok=True)
        command = f"python -m experiments.{NAME} " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        with open(base / INVOCATIONS, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\t{command.strip()}\n")
        for batch in batches:
            failed += run_specs(batch_specs(plan, batch), base)
    from experiments.fashion_mnist.report import write_report  # matplotlib only when a report is written

    report = write_report(plan, base, report_folder(args.out, base), plan.quick)
    if report is None:
        print("error: no run finished; nothing to report", file=sys.stderr)
        return 1
    print(f"report: {shown(report)}; runs: {shown(base)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
