"""The run folder: where it goes, and reading back what the processes left in it.

runs/<name>-<timestamp>/
    config.yaml          resolved config (every default filled in)
    updates.csv          one row per push received by the server
    metrics.jsonl        one evaluation per parameter snapshot
    summary.json         final figures
    processes.csv        psutil samples of every child (cpu %, rss)
    server_summary.json  the server's own counters
    worker-<i>.json      each worker's counters (compute, simulated and waiting time)
    logs/<process>.log   stdout + stderr of every process
    plots/*.png          loss/accuracy vs time and updates, staleness, bytes
    snapshots/           parameter snapshots for the evaluator (final.safetensors = the trained model)
    tensorboard/         TensorBoard event files of metrics and status (run.tensorboard; launch/tensorboard.py)
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path


def make_run_dir(runs_dir: str | Path, name: str, explicit: str | Path | None = None) -> Path:
    if explicit:
        path = Path(explicit)
        if path.exists() and any(path.iterdir()):
            raise FileExistsError(f"--run-dir {path} exists and is not empty")
        path.mkdir(parents=True, exist_ok=True)
        return path
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(runs_dir) / f"{name}-{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    path.mkdir(parents=True)
    return path


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line being written while we read
    return out


def read_updates(run_dir: Path) -> dict[str, list]:
    """updates.csv as columns of numbers (reason stays a string)."""
    path = run_dir / "updates.csv"
    cols: dict[str, list] = {}
    if not path.exists():
        return cols
    with open(path) as f:
        reader = csv.DictReader(f)
        for name in reader.fieldnames or []:
            cols[name] = []
        for row in reader:
            for name, value in row.items():
                cols[name].append(value if name == "reason" else _num(value))
    return cols


def _num(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
