"""At Stability's Edge on small problems (R5 in docs/algorithms.md): python -m experiments.stability_edge [--quick]

(a) the largest stable lr of delayed SGD on the curvature-1 quadratic, measured by bisection through the real
    server for tau = 0..64, against the closed form 2 sin(pi/(2(2 tau + 1)));
(c) the same with momentum 0.9 for two tau: one server buffer against per-worker ("shifted") buffers;
(b) the digits MLP with SGD under a constant simulated delay tau in {0, 4, 16}: lr rules constant, stability
    (lr0 sin(pi/(2(2 tau + 1)))) and inverse (lr0 / tau), with the sharpness of every final model.

The runs go to <runs>/stability_edge-<stamp>/, and so do the report, stability_edge.md, and its plots,
img/stability_edge_*.png; --out DIR writes those into DIR instead (--out docs/results replaces the committed
report, which records measured runs: never do that with a --quick run).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from experiments.common.report import report_folder
from experiments.common.runs import base_parser
from experiments.common.sweeps import shown
from experiments.stability_edge import mlp, quadratic
from experiments.stability_edge.report import write_report

QUADRATIC = "quadratic.json"  # parts (a) and (c) run in this process; their results are kept here


def quadratic_edges(plan: quadratic.QuadPlan, base: Path, report_only: bool) -> tuple[list, list, dict]:
    """Parts (a) and (c): measured now (and kept in quadratic.json), or read back from an earlier run."""
    if report_only:
        return quadratic.load(base / QUADRATIC)
    print("(a)/(c): stable lr of delayed SGD on x^2/2 through the in-process server", flush=True)
    part_a, part_c, example = quadratic.measure(plan)
    quadratic.save(base / QUADRATIC, part_a, part_c, example)
    return part_a, part_c, example


def mlp_runs(plan: mlp.MlpPlan, base: Path, report_only: bool) -> mlp.MlpRuns:
    """Part (b): the launcher's sweeps, run now or read back from an earlier run."""
    if report_only:
        return mlp.recorded(base)
    print("(b): digits MLP, SGD, constant delay, lr rules", flush=True)
    return mlp.run(plan, base)


def parser() -> argparse.ArgumentParser:
    return base_parser("stability_edge", __doc__, "few tau, few bisections, 300-update runs (a smoke test)")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    torch.set_num_threads(1)  # the in-process server and the Hessian products share two cores with the runs
    base = args.report_only or args.runs / f"stability_edge-{time.strftime('%Y%m%d-%H%M%S')}"
    quick, report_only = args.quick, bool(args.report_only)
    quad = quadratic_edges(quadratic.QUICK if quick else quadratic.FULL, base, report_only)
    runs = mlp_runs(mlp.QUICK if quick else mlp.FULL, base, report_only)
    report = write_report(quad, runs, base, report_folder(args.out, base), quick)
    print(f"report: {shown(report)}; runs: {shown(base)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
