"""Gradient-norm curves against communicated bits per worker, read from one run folder.

bits/n after round r = 8 * (bytes of every push computed at a version < r, as the server received them:
message header included) / n. The evaluator scores parameter snapshots at server versions (= rounds, with
the barrier), so each evaluation maps to the bits the workers had sent to produce that version.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from experiments.common.sweeps import Point

NAMES = {"ef21": "EF21-SGD", "ef21-sgdm": "EF21-SGDM", "ef21-sgd2m": "EF21-SGD2M", "ef14": "EF14-SGD"}
TAIL = 0.1  # "final" = the mean of ||grad f||^2 over the evaluations in the last 10% of the bits budget


@dataclass
class Curve:
    bits: np.ndarray  # bits/n at each evaluation, increasing
    grad_norm_sq: np.ndarray  # ||grad f(x)||^2 at that evaluation
    rounds: np.ndarray  # server version (round) of that evaluation
    push_bytes: float  # median bytes of one compressed push (the dense first push left out)


def bits_per_round(point: Point) -> np.ndarray:
    """cum[r] = bits/n the workers sent to produce version r (cum[0] = 0)."""
    u, n = point.updates, int(point.summary["workers"])
    base = np.asarray(u.get("base_version", []), dtype=float).astype(int)
    nbytes = np.asarray(u.get("bytes", []), dtype=float)
    if base.size == 0:
        return np.zeros(1)
    per_round = np.bincount(base, weights=nbytes, minlength=int(base.max()) + 1)  # pushes computed at version v
    return np.concatenate([[0.0], np.cumsum(per_round)]) * 8 / n


def curve(point: Point) -> Curve:
    cum = bits_per_round(point)
    evals = [
        (int(m["updates"]), float(m["grad_norm_sq"]))
        for m in point.metrics
        if m.get("grad_norm_sq") is not None and m.get("updates") is not None
    ]
    evals = sorted({r: g for r, g in evals if r < len(cum)}.items())  # one value per version (the last scored)
    rounds = np.array([r for r, _ in evals], dtype=int)
    later = np.asarray(point.updates.get("base_version", []), dtype=float) > 0
    sizes = np.asarray(point.updates.get("bytes", []), dtype=float)[later]
    return Curve(
        cum[rounds] if rounds.size else np.zeros(0),
        np.array([g for _, g in evals]),
        rounds,
        float(np.median(sizes)) if sizes.size else float("nan"),
    )


def final(c: Curve, budget: float) -> float | None:
    """Mean ||grad f||^2 over the evaluations with bits/n in [(1 - TAIL) budget, budget]; None if there are none
    (a run that stopped early) or if one is not finite (diverged)."""
    inside = (c.bits >= (1 - TAIL) * budget) & (c.bits <= budget)
    if not inside.any() or c.bits[-1] < (1 - TAIL / 2) * budget:
        return None
    values = c.grad_norm_sq[inside]
    return float(values.mean()) if np.isfinite(values).all() else None


def on_grid(c: Curve, grid: np.ndarray) -> np.ndarray:
    """||grad f||^2 interpolated (in log space) at the bits/n of `grid`; NaN outside the evaluated range."""
    ok = np.isfinite(c.grad_norm_sq) & (c.grad_norm_sq > 0)
    if ok.sum() < 2:
        return np.full(grid.shape, np.nan)
    x, y = c.bits[ok], np.log(c.grad_norm_sq[ok])
    out = np.exp(np.interp(grid, x, y))
    out[(grid < x[0]) | (grid > x[-1])] = np.nan
    return out
