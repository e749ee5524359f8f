"""EF21 family on small-batch logistic regression (R4 (ii) in docs/algorithms.md): python -m
experiments.ef21_logreg [--quick]

Softmax regression on the 8x8 digits with the non-convex regulariser 0.1 * sum x^2 / (1 + x^2), n = 10
workers on equal shards, Top-K (K = 6 of d = 650), synchronous rounds; batch 1 and batch 128. For each batch
and method (EF21-SGD, EF21-SGDM, EF21-SGD2M with eta = 0.1, EF14-SGD as a reference) the step size is tuned
over a few powers of two on seed 0; the best one of each EF21 method is run again on seeds 1 and 2. The
expectation (EF21-SGDM poster, MNIST): at the same bits/n the momentum methods end with a 20-30x lower
||grad f||^2 than EF21-SGD at batch 1, and 3-10x lower at batch 128.

The runs go to <runs>/ef21_logreg-<stamp>/ (or the --base folder), and so do the report, ef21_logreg.md, and
its plots, img/ef21_logreg_*.png; --out DIR writes those into DIR instead (--out docs/results replaces the
committed report, which records measured runs: never do that with a --quick run).
Each sweep takes minutes; `--base DIR --only NAME[,NAME]` runs some of them into an existing folder (so
they can be run one at a time), and `--report-only DIR` writes the report from the folder.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from experiments.common.report import report_folder
from experiments.common.runs import base_parser
from experiments.common.sweeps import recorded_sweep, shown
from experiments.ef21_logreg.plan import FULL, QUICK, run_one
from experiments.ef21_logreg.report import write_report


def parser() -> argparse.ArgumentParser:
    ap = base_parser("ef21_logreg", __doc__, "one step size per method, 150 rounds (a smoke test)")
    ap.add_argument("--base", type=Path, help="experiment folder to run into (default: a new one under --runs)")
    ap.add_argument(
        "--only",
        help="comma-separated sweep names to run now, e.g. b1-ef21,b1-ef21-repeat "
        "(default: every sweep not yet in the folder)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.report_only:
        base = args.report_only
    else:
        base = args.base or args.runs / f"ef21_logreg-{time.strftime('%Y%m%d-%H%M%S')}"
        todo = args.only.split(",") if args.only else [n for n in plan.sweeps() if not (base / n).exists()]
        unknown = [n for n in todo if n not in plan.sweeps()]
        if unknown:
            ap.error(f"unknown sweep(s) {unknown}; the sweeps are {plan.sweeps()}")
        for name in todo:
            run_one(plan, name, base)
    missing = [n for n in plan.sweeps() if not (base / n / "sweep.csv").exists()]
    if missing:
        print(f"not written yet: the report needs every sweep; missing {missing} in {shown(base)}")
        return 0 if args.only else 1
    report = write_report(plan, base, report_folder(args.out, base), args.quick)
    print(f"report: {shown(report)}; runs: {shown(base)}")
    failed = [p for n in plan.sweeps() for p in recorded_sweep(base, n).points if not p.ok]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
