"""The Fashion-MNIST study's run folders read back (its runs start one by one in the plan's order through
experiments/common/runs.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from launch.rundir import read_json, read_metrics
from protocol.config.loader import load_experiment
from protocol.config.schema import ExperimentConfig


@dataclass
class Run:
    """One finished run folder: its resolved config, summary.json and evaluations (metrics.jsonl)."""

    key: str  # <batch>/<run>
    folder: Path
    config: ExperimentConfig
    summary: dict
    metrics: list[dict] = field(default_factory=list)


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
