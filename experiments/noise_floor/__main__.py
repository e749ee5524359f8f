"""EF21-SGD against EF21-SGDM noise floors (R3 in docs/algorithms.md): python -m experiments.noise_floor [--quick]

f(x) = 1/2 ||x||^2 with stochastic gradients x + sigma xi (xi ~ N(0, I), sigma = 1), Top-1, started at the
optimum, through the real server and n worker processes (worker.per_process hosts many ranks per process):
EF21-SGD (method ef21), EF21-SGDM (eta 0.1 and 0.01) and EF14-SGD for n in {1, 10, 100} in the papers'
synchronous rounds (apply_every = n with a barrier), in two settings: d = 100 with gamma = 0.01 (the
repository's R3 config) and d = 10 with R3's gamma = 0.1 (docs/algorithms.md); plus asynchronous n = 10 lines. The
expectation (the EF21-SGDM poster): EF21-SGD plateaus at a level that does not shrink with n; EF21-SGDM
sits at least 10x lower and shrinks as n grows.

The work is split into parts, one launcher sweep each, so that it can run in pieces (--parts) into one
experiment folder (--into); every invocation rewrites the report from all the parts the folder holds.
The runs go to <runs>/noise_floor-<stamp>/ (or the --into folder), and so do the report, noise_floor.md, and
its plots, img/noise_floor_*.png; --out DIR writes those into DIR instead (--out docs/results replaces the
committed report, which records measured runs: never do that with a --quick run).
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
import time
from pathlib import Path

from experiments.common.report import report_folder
from experiments.common.runs import base_parser
from experiments.common.sweeps import shown
from experiments.noise_floor.plan import FULL, INVOCATIONS, QUICK, Plan, finished_parts, run_parts
from experiments.noise_floor.report import write_report


def parser() -> argparse.ArgumentParser:
    ap = base_parser("noise_floor", __doc__, "d = 100, n = 1 and 3, 300 rounds, one eta (a smoke test)")
    ap.add_argument(
        "--parts",
        default="*",
        help="comma-separated names or patterns of the parts to run, e.g. 'd100-n100-*' (see --list)",
    )
    ap.add_argument("--list", action="store_true", help="list the parts and exit")
    ap.add_argument("--into", type=Path, metavar="DIR", help="add the runs to this experiment folder")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.list:
        for p in plan.parts():
            print(f"{p.name}: {p.points} runs, {p.workers} workers, {p.rounds} pushes each")
        return 0
    base = args.report_only or args.into or args.runs / f"noise_floor-{time.strftime('%Y%m%d-%H%M%S')}"
    if not args.report_only and not run_chosen(plan, args.parts, args.quick, base):
        return 2
    sweeps = finished_parts(plan, base)
    if not any(p.ok for s in sweeps.values() for p in s.points):
        print("error: no run finished; nothing to report", file=sys.stderr)
        return 1
    report = write_report(sweeps, [p.name for p in plan.parts()], base, report_folder(args.out, base), args.quick)
    print(f"report: {shown(report)}; runs: {shown(base)}")
    failed = [p for s in sweeps.values() for p in s.points if not p.ok]
    return 1 if failed else 0


def run_chosen(plan: Plan, parts: str, quick: bool, base: Path) -> bool:
    """Run the parts that --parts names into `base`; False if it names none."""
    patterns = [s.strip() for s in parts.split(",") if s.strip()]
    chosen = [p for p in plan.parts() if any(fnmatch.fnmatch(p.name, pat) for pat in patterns)]
    if not chosen:
        print(f"error: --parts {parts!r} matches no part (see --list)", file=sys.stderr)
        return False
    if parts != "*":  # run in pieces: the report lists the invocations that filled the folder
        base.mkdir(parents=True, exist_ok=True)
        with open(base / INVOCATIONS, "a") as f:
            quick_flag = " --quick" if quick else ""
            f.write(f"python -m experiments.noise_floor{quick_flag} --parts '{parts}' --into {shown(base)}\n")
    run_parts(chosen, base)
    return True


if __name__ == "__main__":
    sys.exit(main())
