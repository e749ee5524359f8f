"""The figures of one async or sync run that the comparison needs, computed from its run folder.

Definitions (the same in both modes):
    gradients        minibatch gradients that went into the model: async, pushes applied; sync, steps x N
                     (both are summary.json's pushes_applied)
    gradients/s      gradients / wall_s, wall_s counted from the start of training (async: all workers
                     joined; sync: the group's first collective) to the last update
    samples/s        gradients/s x batch size
    steps/s          model updates per second: async, one per push; sync, one per round of N gradients
    ideal            the rate if communication and the server cost nothing: rank i takes
                     T_i = slowdown_i x (compute_s + its measured compute per step) per gradient; async
                     gets sum_i 1/T_i gradients/s, sync N / max_i T_i (every round waits for the slowest)
    time to target   wall_s of the first evaluated snapshot with test accuracy >= target (what summary.json's
                     time_to_acc_s holds); the target was reached between the evaluation before it and it
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.async_vs_sync.runs import worker_json
from experiments.common.sweeps import Point
from launch.summary import time_to_accuracy

TARGET = 0.95


@dataclass
class RunFigures:
    point: Point
    mode: str
    workers: int
    seed: int
    lr: float
    batch_size: int
    wall_s: float
    steps: int
    gradients: int
    ideal_gradients_per_s: float
    t_target: float | None
    t_before: float | None
    grads_at_target: int | None
    final_acc: float | None
    eval_gap_s: float | None  # median time between consecutive evaluations up to the target (or the end)
    cpu_cores: float | None  # all processes of the run together, middle half of the run
    staleness_mean: float
    staleness_max: int
    collective_ms: float | None  # sync: per step, the fastest rank's time inside collectives
    slow_share: float | None  # async: share of applied gradients from the slowed ranks
    late_acc: tuple[float, float] | None  # mean and std of the test accuracy over the last fifth of the run

    @property
    def gradients_per_s(self) -> float:
        return self.gradients / self.wall_s if self.wall_s else 0.0

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.wall_s if self.wall_s else 0.0

    @property
    def samples_per_s(self) -> float:
        return self.gradients_per_s * self.batch_size

    @property
    def efficiency(self) -> float:
        return self.gradients_per_s / self.ideal_gradients_per_s if self.ideal_gradients_per_s else float("nan")


def figures(point: Point, target: float = TARGET) -> RunFigures:
    v, s = point.values, point.summary or {}
    n = v["workers"]
    per_step = n if v["mode"] == "sync" else 1
    metrics = sorted((m for m in point.metrics if m.get("test_acc") is not None), key=lambda m: m["wall_s"])
    t_hit = time_to_accuracy(metrics, target)
    hit = next((i for i, m in enumerate(metrics) if m["wall_s"] == t_hit), None) if t_hit is not None else None
    upto = metrics[: (hit + 1 if hit is not None else len(metrics))]
    gaps = np.diff([m["wall_s"] for m in upto])
    return RunFigures(
        point=point,
        mode=v["mode"],
        workers=n,
        seed=v["seed"],
        lr=v["lr"],
        batch_size=v["batch_size"],
        wall_s=float(s.get("wall_s", 0.0)),
        steps=int(s.get("updates", 0)),
        gradients=int(s.get("pushes_applied", 0)),
        ideal_gradients_per_s=ideal_rate(point.folder, v),
        t_target=t_hit,
        t_before=metrics[hit - 1]["wall_s"] if hit else None,
        grads_at_target=metrics[hit]["updates"] * per_step if hit is not None else None,
        final_acc=s.get("final_test_acc"),
        eval_gap_s=float(np.median(gaps)) if len(gaps) else None,
        cpu_cores=mid_run_cpu(point.folder, float(s.get("wall_s", 0.0))),
        staleness_mean=float(s.get("staleness_mean", 0.0)),
        staleness_max=int(s.get("staleness_max", 0)),
        collective_ms=collective_ms(point.folder, n) if v["mode"] == "sync" else None,
        slow_share=slow_share(point, v) if v["mode"] == "async" else None,
        late_acc=late_accuracy(metrics),
    )


def late_accuracy(metrics: list[dict]) -> tuple[float, float] | None:
    """Mean and std of the evaluated test accuracy over the last fifth of the run's wall time: how much
    the one final evaluation could have differed had the run stopped a little earlier or later."""
    if len(metrics) < 2:
        return None
    end = metrics[-1]["wall_s"]
    late = [m["test_acc"] for m in metrics if m["wall_s"] >= 0.8 * end]
    return (float(np.mean(late)), float(np.std(late, ddof=1))) if len(late) > 1 else None


def step_seconds(run_dir: Path, values: dict) -> list[float]:
    """T_i per rank: slowdown x (simulated compute + the rank's measured compute per gradient)."""
    out = []
    for rank in range(values["workers"]):
        w = worker_json(run_dir, rank)
        measured = w.get("compute_s", 0.0) / w["pushes"] if w.get("pushes") else 0.0
        factor = values["slowdown"][rank] if rank < len(values["slowdown"]) else 1.0
        out.append(factor * (values["compute_s"] + measured))
    return out


def real_compute_s(runs: list[RunFigures]) -> float | None:
    """Mean measured (not simulated) compute per gradient over every rank of the runs."""
    per = []
    for r in runs:
        for rank in range(r.workers):
            w = worker_json(r.point.folder, rank)
            if w.get("pushes"):
                per.append(w.get("compute_s", 0.0) / w["pushes"])
    return float(np.mean(per)) if per else None


def straggler_rank(values: dict) -> int:
    """The most slowed rank of a run (worker.slowdown's largest factor)."""
    return int(np.argmax(values["slowdown"]))


def ideal_rate(run_dir: Path, values: dict) -> float:
    t = [x for x in step_seconds(run_dir, values) if x > 0]
    if len(t) < values["workers"]:
        return float("nan")
    return values["workers"] / max(t) if values["mode"] == "sync" else sum(1 / x for x in t)


def mid_run_cpu(run_dir: Path, wall_s: float) -> float | None:
    """Mean CPU (cores) of all the run's processes together over the middle half of training.

    processes.csv is sampled on the launcher's clock, which starts before the processes import torch;
    training ends about when the samples do (the evaluator's last score takes a fraction of a second),
    so the window is counted back from the last sample: [end - 0.75 wall_s, end - 0.25 wall_s]."""
    path = run_dir / "processes.csv"
    if not path.exists() or wall_s <= 0:
        return None
    totals: dict[float, float] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            t = float(row["wall_s"])
            totals[t] = totals.get(t, 0.0) + float(row["cpu_percent"])
    if not totals:
        return None
    end = max(totals)
    window = [c for t, c in totals.items() if end - 0.75 * wall_s <= t <= end - 0.25 * wall_s]
    return statistics.fmean(window) / 100 if window else None


def collective_ms(run_dir: Path, workers: int) -> float | None:
    """Per step, the least time any rank spent inside collectives: what the all-reduce itself costs,
    waiting for nobody (the slowest rank arrives last and waits least)."""
    per_rank = [w["wait_s"] / w["pushes"] for r in range(workers) if (w := worker_json(run_dir, r)).get("pushes")]
    return 1000 * min(per_rank) if per_rank else None


def slow_share(point: Point, values: dict) -> float | None:
    """The share of applied gradients that came from ranks with slowdown > 1 (async)."""
    slow = {r for r, f in enumerate(values["slowdown"]) if f > 1}
    cols = point.updates
    if not slow or not cols.get("worker"):
        return None
    applied = [int(w) for w, a in zip(cols["worker"], cols["applied"]) if a == 1]
    return sum(w in slow for w in applied) / len(applied) if applied else None
