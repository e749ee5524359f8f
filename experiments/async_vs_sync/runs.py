"""Single launcher runs in a chosen order, recorded so a report can be rebuilt from their folders.

A sweep (launch/sweep.py) always runs the repeats of one setting back to back (seed varies fastest)
and gives every point the same keys; the async-vs-sync comparison needs the two modes interleaved
seed by seed (so slow drift of a shared machine hits both) and a different update count per mode
(a sync step is N gradients). So it starts one `python -m launch CONFIG key=value ... --run-dir`
per run, in its own order, into <experiment>/<batch>/<run>/, and appends to the experiment folder:

    commands.txt   <batch>/<run> TAB the exact launcher command
    loads.tsv      <batch>/<run> TAB 1-, 5- and 15-minute load averages just before it started

A run whose folder already holds a summary.json is not run again, so a batch interrupted (or run
in pieces under a time limit) continues where it stopped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from experiments.common.sweeps import COMMANDS, Point, run_launcher
from launch.rundir import read_json, read_metrics, read_updates

LOADS = "loads.tsv"


@dataclass(frozen=True)
class RunSpec:
    batch: str  # a group of runs started by one invocation (straggler, lr_grid-100, scaling-0, ...)
    name: str  # the run's folder inside the batch folder; sorts in run order
    config: str
    overrides: tuple[str, ...]
    timeout_s: float

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
            _clear(run_dir)
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        command, rc = run_launcher(spec.config, list(spec.overrides), run_dir, spec.timeout_s)
        with open(base / COMMANDS, "a") as f:
            f.write(f"{spec.key}\t{command}\n")
        with open(base / LOADS, "a") as f:
            f.write(f"{spec.key}\t{load}\n")
        failed += rc != 0
    return failed


def _clear(run_dir: Path) -> None:
    """Move an unfinished run aside (never delete measurements): <run>.failed-<n>."""
    n = 1
    while run_dir.with_name(f"{run_dir.name}.failed-{n}").exists():
        n += 1
    run_dir.rename(run_dir.with_name(f"{run_dir.name}.failed-{n}"))


def read_batch(base: Path, batch: str) -> list[Point]:
    """Every run folder of a batch (in run order), its resolved config's values and what it left."""
    folder = base / batch
    if not folder.is_dir():
        return []
    points = []
    for run in sorted(p for p in folder.iterdir() if p.is_dir() and ".failed-" not in p.name):
        cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").exists() else {}
        summary = read_json(run / "summary.json")
        points.append(
            Point(
                run,
                config_values(cfg),
                summary is not None,
                "" if summary else "no summary.json (the run failed or was stopped)",
                summary,
                read_metrics(run),
                read_updates(run),
            )
        )
    return points


def config_values(cfg: dict) -> dict:
    """The settings the comparison varies, from a run's resolved config.yaml."""
    if not cfg:
        return {}
    return {
        "mode": cfg["mode"],
        "workers": cfg["workers"],
        "seed": cfg["seed"],
        "lr": float(cfg["optimizer"]["lr"]),
        "batch_size": cfg["task"]["batch_size"],
        "compute_s": float(cfg["worker"]["compute_s"]),
        "slowdown": list(cfg["worker"]["slowdown"]),
        "max_updates": cfg["run"]["max_updates"],
        "max_seconds": float(cfg["run"]["max_seconds"]),
        "eval_every_s": float(cfg["run"]["eval_every_s"]),
    }


def recorded(base: Path, name: str) -> dict[str, str]:
    """<batch>/<run> -> value, from commands.txt or loads.tsv (the last line of a run that ran twice)."""
    path = base / name
    out = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        key, _, value = line.partition("\t")
        out[key] = value
    return out


def worker_json(run_dir: Path, rank: int) -> dict:
    return read_json(run_dir / f"worker-{rank}.json") or {}
