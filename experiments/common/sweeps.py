"""Sweeps and single runs started through the launcher's command line, and their run folders read back."""

from __future__ import annotations

import csv
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from launch.rundir import read_json, read_metrics, read_updates
from launch.tables import FIGURES
from protocol.config.loader import load_experiment
from worker.tasks.data import load_dataset

# the repository (experiments/common/ is two levels down): the launcher runs here, paths are shown from here
REPO = Path(__file__).resolve().parent.parent.parent
STOP_GRACE_S = 30  # after a timeout, the launcher gets this long to stop its processes (SIGINT) before a kill


@dataclass
class Point:
    """One finished (or failed) point of a sweep: its swept values and its run folder."""

    folder: Path
    values: dict
    ok: bool
    error: str = ""
    summary: dict | None = None
    metrics: list[dict] = field(default_factory=list)
    updates: dict[str, list] = field(default_factory=dict)


@dataclass
class Sweep:
    folder: Path
    command: str  # exactly what ran, for the report
    returncode: int
    points: list[Point]


def shown(path: Path | str) -> str:
    """A path as a reader should type it: relative to the repository when inside it."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def run_sweep(config: str, overrides: list[str], sweep_dir: Path, timeout_s: float) -> Sweep:
    """`python -m launch CONFIG OVERRIDES --run-dir SWEEP_DIR` (a sweep config), bounded by timeout_s."""
    command, rc = run_launcher(config, overrides, sweep_dir, timeout_s)
    return Sweep(sweep_dir, command, rc, read_points(sweep_dir))


def run_launcher(config: str, overrides: list[str], run_dir: Path, timeout_s: float) -> tuple[str, int]:
    """`python -m launch CONFIG OVERRIDES --run-dir RUN_DIR --quiet`, bounded by timeout_s: (command, exit code)."""
    args = [config, *overrides, "--run-dir", shown(run_dir), "--quiet"]
    command = "python -m launch " + " ".join(shlex.quote(a) for a in args)
    print(f"$ {command}", flush=True)
    proc = subprocess.Popen([sys.executable, "-m", "launch", *args], cwd=REPO)
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # the launcher stops every process of its run on Ctrl-C
        try:
            rc = proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        print(f"stopped after {timeout_s:.0f}s (timeout); using what finished", flush=True)
    return command, rc


def read_points(sweep_dir: Path) -> list[Point]:
    """Every point listed in sweep.csv, with its run folder's summary, evaluations and updates."""
    path = sweep_dir / "sweep.csv"
    if not path.exists():
        return []
    with open(path) as f:
        rows = list(csv.DictReader(f))
    known = {"point", "folder", "status", "error"}
    points = []
    for row in rows:
        run = sweep_dir / row["folder"]
        values = {k: yaml.safe_load(v) for k, v in row.items() if k not in known and not _is_figure(k)}
        points.append(
            Point(
                run,
                values,
                row["status"] == "ok",
                row.get("error") or "",
                read_json(run / "summary.json"),
                read_metrics(run),
                read_updates(run),
            )
        )
    return points


def _is_figure(column: str) -> bool:
    return column in FIGURES


def data_sizes(run_dir: Path) -> tuple[int, int]:
    """(training, test) samples of the data set a run used, from its own config.yaml: reports state these
    instead of typing them, so they follow the data set and its split."""
    data = load_dataset(load_experiment(run_dir / "config.yaml").task)
    return len(data.x_train), len(data.x_test)


COMMANDS = "commands.txt"  # in an experiment's folder: the launcher commands, one per sweep subfolder


def record_sweep(sweep: Sweep, base: Path) -> None:
    """Remember how a sweep was started, so a report can be rebuilt from the folders (--report-only)."""
    base.mkdir(parents=True, exist_ok=True)  # a sweep refused before it started leaves no folder
    with open(base / COMMANDS, "a") as f:
        f.write(f"{sweep.folder.name}\t{sweep.command}\n")


def recorded_sweep(base: Path, name: str) -> Sweep:
    """A sweep finished earlier, read back from its folder and commands.txt."""
    lines = (base / COMMANDS).read_text().splitlines() if (base / COMMANDS).exists() else []
    command = next((c for n, _, c in (line.partition("\t") for line in lines) if n == name), "(not recorded)")
    return Sweep(base / name, command, 0, read_points(base / name))
