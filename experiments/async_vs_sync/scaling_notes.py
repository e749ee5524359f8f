"""What the scaling runs say about why each mode scales as it does: the cost per step against the ideal,
and how many steps and gradients each N needed to reach the target (the wording: report.md.tmpl)."""

from __future__ import annotations

import numpy as np

from experiments.async_vs_sync.analysis import TARGET, RunFigures
from experiments.common.report import cores
from experiments.common.templates import Prose

prose = Prose(__package__)


def _mean(xs: list) -> float | None:
    vals = [x for x in xs if x is not None]
    return float(np.mean(vals)) if vals else None


def _to_target(runs: list[RunFigures], n: int, mode: str) -> tuple[float | None, float | None]:
    """Mean gradients and model steps to the target at N workers (sync: a step is N gradients)."""
    g = [r.grads_at_target for r in runs if r.mode == mode and r.workers == n]
    grads = _mean(g)
    return grads, (None if grads is None else grads / (n if mode == "sync" else 1))


def scaling_notes(runs: list[RunFigures], workers: tuple[int, ...]) -> list[str]:
    if not runs:
        return []
    return _async(runs, workers) + _sync(runs, workers)


def _async(runs: list[RunFigures], workers: tuple[int, ...]) -> list[str]:
    lo, hi = min(workers), max(workers)
    ga1, _ = _to_target(runs, lo, "async")
    gan, _ = _to_target(runs, hi, "async")
    if not (ga1 and gan):
        return []
    stale = _mean([r.staleness_mean for r in runs if r.mode == "async" and r.workers == hi])
    return [
        prose(
            "scaling_async",
            target=f"{TARGET:.0%}",
            first=f"{ga1:.0f}",
            lowest=lo,
            last=f"{gan:.0f}",
            highest=hi,
            staleness=f"{stale:.1f}",
        )
    ]


def _sync(runs: list[RunFigures], workers: tuple[int, ...]) -> list[str]:
    lo, hi = min(workers), max(workers)
    sync_hi = [r for r in runs if r.mode == "sync" and r.workers == hi]
    _, s1 = _to_target(runs, lo, "sync")
    _, sn = _to_target(runs, hi, "sync")
    if not (sync_hi and s1 and sn):
        return []
    coll = [_mean([r.collective_ms for r in runs if r.mode == "sync" and r.workers == n]) for n in workers]
    return [
        prose(
            "scaling_sync",
            highest=hi,
            step=f"{1000 * np.mean([r.wall_s / r.steps for r in sync_hi if r.steps]):.1f}",
            ideal=f"{1000 * np.mean([r.workers / r.ideal_gradients_per_s for r in sync_hi]):.1f}",
            collective=", ".join("-" if c is None else f"{c:.1f}" for c in coll),
            workers=", ".join(map(str, workers)),
            cores=cores(),
            target=f"{TARGET:.0%}",
            first=f"{s1:.0f}",
            lowest=lo,
            last=f"{sn:.0f}",
            fewer=f"{s1 / sn:.1f}",
            ideal_fewer=hi // lo,
        )
    ]
