"""APAM under artificial delay (R2 in docs/algorithms.md): python -m experiments.artificial_delay [--quick]

One worker trains the digits MLP with the server's AMSGrad; the server answers every push with one of its
last D parameter versions, drawn uniformly (staleness.delay: uniform), for D in {1, 6, 21, 51, 101}, the
same number of updates each, a few seeds; then the same with the paper form of AMSGrad. The expectation
(APAM Sec. 5.4): the final accuracy does not depend on D (within about half a point), early progress is
slower the larger D, and the measured staleness is uniform on 0..D-1.

The runs go to <runs>/artificial_delay-<stamp>/, and so do the report, artificial_delay.md, and its plots,
img/artificial_delay_*.png; --out DIR writes those into DIR instead (--out docs/results replaces the committed
report, which records measured runs: never do that with a --quick run).
"""

from __future__ import annotations

import argparse
import sys
import time

from experiments.artificial_delay.report import write_report
from experiments.artificial_delay.runs import FULL, QUICK, run_all
from experiments.common.report import report_folder
from experiments.common.runs import base_parser
from experiments.common.sweeps import recorded_sweep, shown


def parser() -> argparse.ArgumentParser:
    return base_parser("artificial_delay", __doc__, "D = 1 and 6, one seed, 300 updates (a smoke test)")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.report_only:
        base = args.report_only
        torch_form, paper_form = recorded_sweep(base, "torch"), recorded_sweep(base, "paper")
    else:
        base = args.runs / f"artificial_delay-{time.strftime('%Y%m%d-%H%M%S')}"
        torch_form, paper_form = run_all(QUICK if args.quick else FULL, base)
    if not any(p.ok for p in torch_form.points):
        print("error: no run finished; nothing to report", file=sys.stderr)
        return 1
    report = write_report(torch_form, paper_form, base, report_folder(args.out, base), args.quick)
    print(f"report: {shown(report)}; runs: {shown(base)}")
    failed = [p for s in (torch_form, paper_form) for p in s.points if not p.ok]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
