"""The figures of one run that the report needs, computed from its run folder (summary.json, metrics.jsonl,
the resolved config.yaml).

Definitions:
    gradients      minibatch gradients that went into the model (summary.json's pushes_applied: async, one per
                   push; sync, N per step)
    epochs         gradients x batch size / training images
    time to acc    wall_s of the first evaluated snapshot with test accuracy >= acc (as summary.json's
                   time_to_acc_s), counted from the start of training; the evaluations are eval_gap_s apart,
                   which is the resolution of these times
    uplink bytes   every push's bytes as the server received them (tensor frames and headers); downlink: every
                   reply and welcome, which carry the dense parameters whatever the uplink's compression
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from experiments.fashion_mnist.runs import Run
from launch.summary import time_to_accuracy

STRAGGLER_TARGET = 0.90  # issue 12: time to 0.90 test accuracy, async against sync with one 4x straggler
TARGET = 0.925  # issue 12: the <100k-parameter CNN's target (the benchmark's "2 Conv <100K parameters" row)
ONE_POINT = 0.01  # issue 12: EF21-SGDM within 1 point of test accuracy of dense
BYTES_FACTOR = 50  # issue 12: ... with at least 50x fewer uplink bytes


@dataclass
class RunFigures:
    run: Run
    label: str  # what the run is, for tables and legends (async dense, async EF21-SGDM topk 1%, sync, ...)
    params: int
    wall_s: float
    updates: int  # server steps (sync: steps of N gradients)
    gradients: int
    epochs: float
    final_acc: float | None
    best_acc: float | None
    t_straggler_target: float | None  # s to STRAGGLER_TARGET
    t_target: float | None  # s to TARGET
    uplink_bytes: int
    downlink_bytes: int
    eval_gap_s: float | None  # median time between consecutive evaluations

    @property
    def updates_per_s(self) -> float:
        return self.updates / self.wall_s if self.wall_s else 0.0

    @property
    def gradients_per_s(self) -> float:
        return self.gradients / self.wall_s if self.wall_s else 0.0

    @property
    def uplink_per_gradient(self) -> float:
        return self.uplink_bytes / self.gradients if self.gradients else 0.0

    @property
    def curve(self) -> tuple[list[float], list[float]]:
        """(wall_s, test_acc) of every evaluation."""
        points = [(m["wall_s"], m["test_acc"]) for m in self.run.metrics if m.get("test_acc") is not None]
        return [t for t, _ in points], [a for _, a in points]


def figures(run: Run, n_train: int) -> RunFigures:
    s, cfg = run.summary, run.config
    evaluated = [m for m in run.metrics if m.get("test_acc") is not None]
    gaps = [b["wall_s"] - a["wall_s"] for a, b in zip(evaluated, evaluated[1:])]
    gradients = int(s["pushes_applied"])
    return RunFigures(
        run=run,
        label=label(run),
        params=int(s["num_params"]),
        wall_s=float(s["wall_s"]),
        updates=int(s["updates"]),
        gradients=gradients,
        epochs=gradients * cfg.task.batch_size / n_train,
        final_acc=s.get("final_test_acc"),
        best_acc=s.get("best_test_acc"),
        t_straggler_target=time_to_accuracy(evaluated, STRAGGLER_TARGET),
        t_target=time_to_accuracy(evaluated, TARGET),
        uplink_bytes=int(s["uplink_bytes"]),
        downlink_bytes=int(s["downlink_bytes"]),
        eval_gap_s=statistics.median(gaps) if gaps else None,
    )


def label(run: Run) -> str:
    """'50k async dense', '1.6M async ef21-sgdm topk 1%', '50k sync dense, straggler': the model's size, the
    mode, what the workers push, and whether a rank was slowed."""
    cfg, c = run.config, run.config.compression
    params = int(run.summary["num_params"])
    size = f"{params / 1e6:.2g}M" if params >= 1e6 else f"{params / 1e3:.0f}k"
    what = "dense" if c.method == "none" else f"{c.method} {c.compressor}"
    if c.method != "none" and c.compressor in ("topk", "randk") and c.k == 0:
        what += f" {100 * c.ratio:g}%"
    slow = ", straggler" if max(cfg.worker.slowdown, default=1.0) > 1 else ""
    return f"{size} {cfg.mode} {what}{slow}"
