"""Launcher runs started one by one in the plan's order, and their run folders read back.

Each run is one `python -m launch CONFIG key=value ... --run-dir <experiment>/<batch>/<run> --quiet`; the
experiment folder collects, one line per run started:

    commands.txt   <batch>/<run> TAB the exact launcher command
    loads.tsv      <batch>/<run> TAB 1-, 5- and 15-minute load averages just before it started

A run whose folder already holds a summary.json is not run again, so a batch interrupted (or run in pieces
under a time limit) continues where it stopped; a half-finished folder is moved aside, never deleted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from experiments.common.sweeps import COMMANDS, run_launcher
from launch.rundir import read_json, read_metrics
from protocol.config.loader import load_experiment
from protocol.config.schema import ExperimentConfig

LOADS = "loads.tsv"


@dataclass(frozen=True)
class RunSpec:
    batch: str  # the group of runs one invocation may start (dense, ef21, straggler, wide)
    name: str  # the run's folder inside the batch folder; sorts in run order
    config: str  # the launcher config, relative to the repository
    overrides: tuple[str, ...]
    timeout_s: float  # wall-clock bound on the launcher command (its run.max_seconds plus start and end)

    def folder(self, base: Path) -> Path:
        return base / self.batch / self.name

    @property
    def key(self) -> str:
        return f"{self.batch}/{self.name}"


@dataclass
class Run:
    """One finished run folder: its resolved config, summary.json and evaluations (metrics.jsonl)."""

    key: str  # <batch>/<run>
    folder: Path
    config: ExperimentConfig
    summary: dict
    metrics: list[dict] = field(default_factory=list)


def run_specs(specs: list[RunSpec], base: Path) -> int:
    """Run every spec not finished yet, in order; returns how many failed."""
    base.mkdir(parents=True, exist_ok=True)
    failed = 0
    for spec in specs:
        run_dir = spec.folder(base)
        if (run_dir / "summary.json").exists():
            print(f"already done: {spec.key}", flush=True)
            continue
        if run_dir.exists():  # a run stopped half-way: start it afresh
            _move_aside(run_dir)
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        command, rc = run_launcher(spec.config, list(spec.overrides), run_dir, spec.timeout_s)
        with open(base / COMMANDS, "a") as f:
            f.write(f"{spec.key}\t{command}\n")
        with open(base / LOADS, "a") as f:
            f.write(f"{spec.key}\t{load}\n")
        failed += rc != 0
    return failed


def _move_aside(run_dir: Path) -> None:
    """An unfinished run becomes <run>.failed-<n> (measurements are never deleted)."""
    n = 1
    while run_dir.with_name(f"{run_dir.name}.failed-{n}").exists():
        n += 1
    run_dir.rename(run_dir.with_name(f"{run_dir.name}.failed-{n}"))


def read_runs(base: Path, batch: str) -> list[Run]:
    """Every finished run of a batch (those with a summary.json), in run order."""
    folder = base / batch
    runs = []
    for run in sorted(folder.iterdir() if folder.is_dir() else []):
        summary = read_json(run / "summary.json")
        if not run.is_dir() or ".failed-" in run.name or summary is None:
            continue
        metrics = sorted((m for m in read_metrics(run) if m.get("wall_s") is not None), key=lambda m: m["wall_s"])
        runs.append(Run(f"{batch}/{run.name}", run, load_experiment(run / "config.yaml"), summary, metrics))
    return runs


def recorded(base: Path, name: str) -> dict[str, str]:
    """<batch>/<run> -> value, from commands.txt or loads.tsv (the last line of a run that ran twice)."""
    path = base / name
    out = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        key, _, value = line.partition("\t")
        out[key] = value
    return out
