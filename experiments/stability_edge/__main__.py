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

from experiments.common.report import add_out_option, header, report_folder, save_png
from experiments.common.sweeps import shown
from experiments.stability_edge import mlp, mlp_report, quadratic

QUADRATIC = "quadratic.json"  # parts (a) and (c) run in this process; their results are kept here


def part_a_c(plan: quadratic.QuadPlan, base: Path, report_only: bool) -> tuple[list[str], dict]:
    if report_only:
        part_a, part_c, example = quadratic.load(base / QUADRATIC)
    else:
        print("(a)/(c): stable lr of delayed SGD on x^2/2 through the in-process server", flush=True)
        part_a, part_c, example = quadratic.measure(plan)
        quadratic.save(base / QUADRATIC, part_a, part_c, example)
    text = [
        "## (a) Stable lr against tau: the quadratic through the server",
        "One fake worker pushes the gradient of f(x) = x^2/2 (curvature 1) at the parameters it was sent; the "
        "server (`staleness.delay: constant`, D = tau + 1, SGD, `lr_rule: constant`) answers with its tau-old "
        "version, so x_{t+1} = x_t - lr x_{t-tau}. A trajectory is unstable when it passes |x| = 1e6 or the "
        "envelope of |x| over its last tenth exceeds the one before its middle. The edge is bracketed by "
        "halving/doubling from the previous tau's edge and then bisected in log space; 'stable' is the largest "
        "lr seen stable, 'unstable' the smallest seen unstable.",
        quadratic.edge_table(part_a, "closed form 2 sin(pi/(2(2tau+1)))"),
        f"## (c) Momentum {quadratic.BETA:g}: server buffer against shifted (per-worker) buffers",
        "Round robin over W = tau + 1 fake workers (each computes at the parameters of its own last reply, so "
        "every push is tau stale), SGD momentum through `optimizer.momentum_mode: server` (one buffer) or "
        "`shifted` (one buffer per worker). The theory column is where the largest root of each recursion's "
        "characteristic polynomial leaves the unit circle (numpy roots, docs/algorithms.md, Momentum under delay).",
        quadratic.edge_table(part_c, "theory (roots)"),
        "### Expectations against the measurements (a, c)",
        "\n".join(quadratic.verdicts(part_a, part_c)),
    ]
    return text, {"tau": quadratic.figure(part_a, part_c, example)}


def part_b(plan: mlp.MlpPlan, base: Path, report_only: bool) -> tuple[list[str], dict, list[str]]:
    if report_only:
        runs = mlp.recorded(base)
    else:
        print("(b): digits MLP, SGD, constant delay, lr rules", flush=True)
        runs = mlp.run(plan, base)
    text, figs = mlp_report.report(runs, max(int(p.summary["updates"]) for p in runs.base.points if p.ok))
    commands = [runs.grid.command, runs.base.command, runs.delayed.command]
    return ["## (b) Digits MLP under a constant delay: lr rules", *text], figs, commands


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m experiments.stability_edge", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few tau, few bisections, 300-update runs (a smoke test)")
    add_out_option(ap)
    ap.add_argument("--runs", type=Path, default=Path("runs"), help="parent folder of the run folders")
    ap.add_argument(
        "--report-only",
        type=Path,
        metavar="DIR",
        help="rebuild the report from an earlier experiment folder (runs/stability_edge-*), no new runs",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    torch.set_num_threads(1)  # the in-process server and the Hessian products share two cores with the runs
    base = args.report_only or args.runs / f"stability_edge-{time.strftime('%Y%m%d-%H%M%S')}"
    quick, out = args.quick, report_folder(args.out, base)
    quad_text, figs = part_a_c(quadratic.QUICK if quick else quadratic.FULL, base, bool(args.report_only))
    mlp_text, mlp_figs, commands = part_b(mlp.QUICK if quick else mlp.FULL, base, bool(args.report_only))
    figs |= mlp_figs
    for name, fig in figs.items():
        save_png(fig, out / "img" / f"stability_edge_{name}.png")
    title = "At Stability's Edge on small problems (R5 in docs/algorithms.md)"
    text = [
        header(title, quick, "python -m experiments.stability_edge", commands, base),
        "Parts (a) and (c) run the server in this process (`experiments/stability_edge/delayed_quadratic.py`); "
        "part (b) runs the launcher's sweeps above.",
        *quad_text,
        "![stable lr against tau](img/stability_edge_tau.png)",
        *mlp_text,
        "![digits MLP under delay](img/stability_edge_mlp.png)",
    ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "stability_edge.md").write_text("\n\n".join(text) + "\n")
    print(f"report: {shown(out / 'stability_edge.md')}; runs: {shown(base)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
