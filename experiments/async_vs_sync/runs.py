"""The async-vs-sync study's run folders read back (its runs start through experiments/common/runs.py: the two
modes interleaved seed by seed, a different update count per mode, since a sync step is N gradients)."""

from __future__ import annotations

from pathlib import Path

import yaml

from experiments.common.sweeps import Point
from launch.rundir import read_json, read_metrics, read_updates


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


def worker_json(run_dir: Path, rank: int) -> dict:
    return read_json(run_dir / f"worker-{rank}.json") or {}
