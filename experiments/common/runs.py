"""Single launcher runs started one by one in a study's own order, recorded so its report can be rebuilt from
their folders.

A sweep (launch/sweep.py) runs the repeats of one setting back to back and gives every point the same keys;
a study that interleaves settings seed by seed (so slow drift of a shared machine hits each alike) or gives
each setting its own update count starts one `python -m launch CONFIG key=value ... --run-dir
<experiment>/<batch>/<run> --quiet` per run instead, and the experiment folder collects, per run started:

    commands.txt   <batch>/<run> TAB the exact launcher command
    loads.tsv      <batch>/<run> TAB 1-, 5- and 15-minute load averages just before it started

A run whose folder already holds a summary.json is not run again, so a batch interrupted (or run in pieces
under a time limit) continues where it stopped; a half-finished folder is moved aside, never deleted.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from experiments.common.report import add_out_option
from experiments.common.sweeps import COMMANDS, run_launcher, shown

LOADS = "loads.tsv"
INVOCATIONS = "invocations.txt"  # a study's own command lines that ran batches into the folder


@dataclass(frozen=True)
class RunSpec:
    batch: str  # the group of runs one invocation may start (straggler, dense, lr_grid-100, ...)
    name: str  # the run's folder inside the batch folder; sorts in run order
    config: str  # the launcher config, relative to the repository
    overrides: tuple[str, ...]
    timeout_s: float  # wall-clock bound on the launcher command (its run.max_seconds plus start and end)

    def folder(self, base: Path) -> Path:
        return base / self.batch / self.name

    @property
    def key(self) -> str:
        return f"{self.batch}/{self.name}"


def finished(run_dir: Path) -> bool:
    return (run_dir / "summary.json").exists()


def run_specs(specs: list[RunSpec], base: Path) -> int:
    """Run every spec not finished yet, in order; returns how many failed."""
    base.mkdir(parents=True, exist_ok=True)
    failed = 0
    for spec in specs:
        run_dir = spec.folder(base)
        if finished(run_dir):
            print(f"already done: {spec.key}", flush=True)
            continue
        if run_dir.exists():  # a run stopped half-way: start it afresh
            move_aside(run_dir)
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        command, rc = run_launcher(spec.config, list(spec.overrides), run_dir, spec.timeout_s)
        with open(base / COMMANDS, "a") as f:
            f.write(f"{spec.key}\t{command}\n")
        with open(base / LOADS, "a") as f:
            f.write(f"{spec.key}\t{load}\n")
        failed += rc != 0
    return failed


def move_aside(run_dir: Path) -> None:
    """An unfinished run becomes <run>.failed-<n> (measurements are never deleted)."""
    n = 1
    while run_dir.with_name(f"{run_dir.name}.failed-{n}").exists():
        n += 1
    run_dir.rename(run_dir.with_name(f"{run_dir.name}.failed-{n}"))


def recorded(base: Path, name: str) -> dict[str, str]:
    """<batch>/<run> -> value, from commands.txt or loads.tsv (the last line of a run that ran twice)."""
    path = base / name
    out = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        key, _, value = line.partition("\t")
        out[key] = value
    return out


class Plan(Protocol):
    def batches(self) -> list[str]: ...


@dataclass
class Invocation:
    """What one command line of a study asked for: its plan, its experiment folder, its parsed arguments."""

    plan: Any
    base: Path
    quick: bool
    args: argparse.Namespace


def base_parser(name: str, doc: str, quick_help: str) -> argparse.ArgumentParser:
    """The command line every study has: --quick, --out, --runs, --report-only (add a study's own options)."""
    ap = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=doc.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=quick_help)
    add_out_option(ap)
    ap.add_argument("--runs", type=Path, default=Path("runs"), help="parent folder of new experiment folders")
    ap.add_argument("--report-only", type=Path, metavar="DIR",
                    help="rebuild the report from an earlier experiment folder (no new runs)")  # fmt: skip
    return ap


def study_parser(name: str, doc: str, quick_help: str, batches: list[str]) -> argparse.ArgumentParser:
    """base_parser and the batches of single runs: --batches, --into."""
    ap = base_parser(name, doc, quick_help)
    ap.add_argument("--batches", help="comma-separated batches to run (default: all): " + ", ".join(batches))
    ap.add_argument("--into", type=Path, metavar="DIR", help="run into this experiment folder (continue it)")
    return ap


def invoke(name: str, ap: argparse.ArgumentParser, argv: list[str] | None, plans: tuple[Any, Any]) -> Invocation:
    """Parse argv for study `name` with (full, quick) plans: the plan, and the experiment folder (new under
    --runs, --into's, or --report-only's). Exits 2 naming an unknown batch."""
    args = ap.parse_args(argv)
    full, quick = plans
    if args.report_only:
        is_quick = args.quick or args.report_only.name.startswith(f"{name}-quick-")
        return Invocation(quick if is_quick else full, args.report_only, is_quick, args)
    plan = quick if args.quick else full
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = args.into or args.runs / f"{name}{'-quick' if args.quick else ''}-{stamp}"
    batches = args.batches.split(",") if args.batches else plan.batches()
    unknown = [b for b in batches if b not in plan.batches()]
    if unknown:
        ap.error(f"unknown batch {unknown[0]!r}; this plan has: {', '.join(plan.batches())}")
    args.batches = batches
    return Invocation(plan, base, args.quick, args)


def run_batches(name: str, inv: Invocation, argv: list[str] | None, specs: Callable[[str], list[RunSpec]]) -> int:
    """Every batch the invocation asked for (none with --report-only), its command line recorded in the
    experiment folder's invocations.txt; returns how many runs failed."""
    if inv.args.report_only:
        return 0
    inv.base.mkdir(parents=True, exist_ok=True)
    command = f"python -m experiments.{name} " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    with open(inv.base / INVOCATIONS, "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\t{command.strip()}\n")
    return sum(run_specs(specs(batch), inv.base) for batch in inv.args.batches)


def outcome(report: Path | None, base: Path, failed: int) -> int:
    """A study's last words and exit code: 1 when no run finished (nothing to report) or a run failed."""
    if report is None:
        print("error: no run finished; nothing to report", file=sys.stderr)
        return 1
    print(f"report: {shown(report)}; runs: {shown(base)}")
    return 1 if failed else 0
