"""The async-vs-sync report's tables: every straggler run, the straggler summary over seeds, the lr grid,
the scaling runs, and the load before each run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.async_vs_sync.analysis import TARGET, RunFigures
from experiments.async_vs_sync.plan import MODES, Plan
from experiments.common.report import table
from experiments.common.runs import LOADS, recorded
from experiments.common.stats import pm


def of(runs: list[RunFigures], mode: str, lr: float | None = None) -> list[RunFigures]:
    """The runs of one mode (and one lr)."""
    return [r for r in runs if r.mode == mode and (lr is None or r.lr == lr)]


def _f(x, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def run_rows(runs: list[RunFigures]) -> list[list]:
    rows = []
    for r in runs:
        t = "-" if r.t_target is None else f"{r.t_target:.2f} ({r.t_before or 0:.2f})"
        rows.append(
            [
                r.mode,
                r.seed,
                f"{r.lr:g}",
                t,
                r.grads_at_target or "-",
                _f(r.final_acc, 4),
                f"{r.wall_s:.1f}",
                f"{r.gradients_per_s:.1f} / {r.ideal_gradients_per_s:.1f}",
                f"{r.steps_per_s:.1f}",
                f"{r.staleness_mean:.1f} / {r.staleness_max}",
                _f(r.slow_share, 3) if r.mode == "async" else _f(r.collective_ms, 1),
                _f(r.cpu_cores, 2),
            ]
        )
    return rows


RUN_HEADER = [
    "mode",
    "seed",
    "lr",
    f"s to {TARGET:.0%} (previous eval)",
    f"gradients to {TARGET:.0%}",
    "final acc",
    "wall s",
    "gradients/s / ideal",
    "steps/s",
    "staleness mean / max",
    "async: straggler share; sync: all-reduce ms",
    "CPU cores",
]


def summary_rows(groups: dict[str, list[RunFigures]]) -> list[list]:
    rows = []
    for label, runs in groups.items():
        ts = [r.t_target for r in runs]
        reached = [t for t in ts if t is not None]
        rows.append(
            [
                label,
                len(runs),
                pm(ts, 2),
                f"{min(reached):.2f} - {max(reached):.2f}" if reached else "-",
                pm([r.grads_at_target for r in runs], 0),
                pm([r.final_acc for r in runs], 4),
                pm([r.gradients_per_s for r in runs], 1),
                pm([r.ideal_gradients_per_s for r in runs], 1),
            ]
        )
    return rows


SUMMARY_HEADER = [
    "mode, lr",
    "runs",
    f"s to {TARGET:.0%}",
    "min - max",
    f"gradients to {TARGET:.0%}",
    "final acc",
    "gradients/s",
    "ideal gradients/s",
]


def runs_table(runs: list[RunFigures]) -> str:
    return table(RUN_HEADER, run_rows(sorted(runs, key=lambda r: (r.lr, r.seed, r.mode))))


def summary_table(groups: dict[str, list[RunFigures]]) -> str:
    return table(SUMMARY_HEADER, summary_rows(groups))


def grid_table(plan: Plan, grid: list[RunFigures], best: dict) -> str:
    rows = []
    for m in MODES:
        for lr in plan.lrs:
            runs = of(grid, m, lr)
            if runs:
                ts = ", ".join("-" if r.t_target is None else f"{r.t_target:.2f}" for r in runs)
                best_mark = "**best**" if best.get(m) == lr else ""
                rows.append(
                    [m, f"{lr:g}", ts, pm([r.t_target for r in runs], 2), pm([r.final_acc for r in runs], 4), best_mark]
                )
    return table(["mode", "lr", f"s to {TARGET:.0%} per seed", "mean", "final acc", ""], rows)


SCALING_HEADER = [
    "N",
    "mode",
    "runs",
    "gradients/s",
    "ideal",
    "efficiency",
    "samples/s",
    "steps/s",
    f"s to {TARGET:.0%}",
]
SCALING_HEADER += ["speed-up vs N=1", "final acc", "staleness mean", "all-reduce ms", "CPU cores", "peak RSS MB (all)"]


def scaling_table(plan: Plan, runs: list[RunFigures]) -> str:
    rows = []
    for n in plan.scaling_workers:
        for m in MODES:
            g = [r for r in runs if r.mode == m and r.workers == n]
            if g:
                one = [r.t_target for r in runs if r.mode == m and r.workers == min(plan.scaling_workers)]
                rows.append(_scaling_row(n, m, g, one))
    return table(SCALING_HEADER, rows)


def _scaling_row(n: int, m: str, g: list[RunFigures], one: list[float | None]) -> list:
    """N workers in mode m over seeds; `one`: the times to the target with the fewest workers."""
    tn = [r.t_target for r in g if r.t_target is not None]
    t1 = [t for t in one if t is not None]
    speed = f"{np.mean(t1) / np.mean(tn):.2f}x" if t1 and tn else "-"
    rss = [sum(p["rss_peak_mb"] for p in (r.point.summary or {}).get("processes", {}).values()) for r in g]
    return [
        n,
        m,
        len(g),
        pm([r.gradients_per_s for r in g], 1),
        pm([r.ideal_gradients_per_s for r in g], 1),
        pm([r.efficiency for r in g], 2),
        pm([r.samples_per_s for r in g], 0),
        pm([r.steps_per_s for r in g], 1),
        pm([r.t_target for r in g], 2),
        speed,
        pm([r.final_acc for r in g], 4),
        pm([r.staleness_mean for r in g], 1),
        pm([r.collective_ms for r in g], 1) if m == "sync" else "-",
        pm([r.cpu_cores for r in g], 2),
        f"{max(rss):.0f}",
    ]


def loads_table(base: Path) -> str:
    rows = [[key, *value.split()] for key, value in recorded(base, LOADS).items()]
    return table(["run", "load 1 min", "5 min", "15 min"], rows)
