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
import shlex
import sys
import time
from pathlib import Path

from experiments.async_vs_sync.plan import FULL, INVOCATIONS, QUICK, batch_specs
from experiments.async_vs_sync.runs import run_specs
from experiments.common.report import add_out_option, report_folder
from experiments.common.sweeps import shown


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m experiments.async_vs_sync", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed, 400 gradients, 1 and 2 workers (a smoke test)")
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
        plan = QUICK if args.quick or base.name.startswith("async_vs_sync-quick-") else FULL
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = args.into or args.runs / f"async_vs_sync{'-quick' if args.quick else ''}-{stamp}"
        batches = args.batches.split(",") if args.batches else plan.batches()
        unknown = [b for b in batches if b not in plan.batches()]
        if unknown:
            ap.error(f"unknown batch {unknown[0]!r}; this plan has: {', '.join(plan.batches())}")
        base.mkdir(parents=True, exist_ok=True)
        command = "python -m experiments.async_vs_sync " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        with open(base / INVOCATIONS, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\t{command.strip()}\n")
        for batch in batches:
            failed += run_specs(batch_specs(plan, batch, base), base)
    from experiments.async_vs_sync.report import write_report  # matplotlib only when a report is written

    report = write_report(plan, base, report_folder(args.out, base), args.quick)
    if report is None:
        print("error: no run finished; nothing to report", file=sys.stderr)
        return 1
    print(f"report: {shown(report)}; runs: {shown(base)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
