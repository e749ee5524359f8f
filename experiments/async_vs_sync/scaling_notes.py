"""What the scaling runs say about why each mode scales as it does: the cost per step against the ideal,
and how many steps and gradients each N needed to reach the target."""

from __future__ import annotations

import numpy as np

from experiments.async_vs_sync.analysis import TARGET, RunFigures


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
    lo, hi = min(workers), max(workers)
    out = []
    ga1, _ = _to_target(runs, lo, "async")
    gan, _ = _to_target(runs, hi, "async")
    stale = _mean([r.staleness_mean for r in runs if r.mode == "async" and r.workers == hi])
    if ga1 and gan:
        out.append(
            f"- Scaling, async: gradients to {TARGET:.0%} went from {ga1:.0f} at N = {lo} to {gan:.0f} at "
            f"N = {hi} (staleness mean {stale:.1f}): a stale gradient is worth a little less than a fresh "
            f"one, so the time to {TARGET:.0%} scales a little less than the throughput."
        )
    sync_hi = [r for r in runs if r.mode == "sync" and r.workers == hi]
    _, s1 = _to_target(runs, lo, "sync")
    _, sn = _to_target(runs, hi, "sync")
    if sync_hi and s1 and sn:
        step_ms = 1000 * np.mean([r.wall_s / r.steps for r in sync_hi if r.steps])
        ideal_ms = 1000 * np.mean([r.workers / r.ideal_gradients_per_s for r in sync_hi])
        coll = [_mean([r.collective_ms for r in runs if r.mode == "sync" and r.workers == n]) for n in workers]
        coll_text = ", ".join("-" if c is None else f"{c:.1f}" for c in coll)
        out.append(
            f"- Scaling, sync: at N = {hi} a step took {step_ms:.1f} ms against the ideal {ideal_ms:.1f} ms. "
            f"The all-reduce itself cost {coll_text} ms at N = {', '.join(map(str, workers))}: messages "
            f"among N processes on 2 cores, each waiting for the next to be scheduled (our reading, not "
            f"measured separately). Steps to {TARGET:.0%} fell only from {s1:.0f} at N = {lo} to {sn:.0f} "
            f"at N = {hi}: at a fixed lr, an AMSGrad step (normalised by the running gradient magnitude) "
            f"on the mean of N gradients moves the model about as far as a step on one, only less noisily, "
            f"so N times the gradients per step bought {s1 / sn:.1f}x fewer steps, not {hi // lo}x; with "
            f"fewer steps per second on top, the time to {TARGET:.0%} barely fell."
        )
    return out
