"""Simulated stragglers and compute time: how long a step should look, given how long it took.

Shared by the asynchronous worker (worker/loop.py) and the synchronous baseline (sync/loop.py), so
that `worker.slowdown`, `worker.jitter` and `worker.compute_s` mean the same in both modes. Pure
arithmetic: the caller draws the random number and sleeps.
"""

from __future__ import annotations

from protocol.config.schema import WorkerConfig


def extra_sleep_s(w: WorkerConfig, factor: float, compute_s: float, u: float) -> float:
    """Seconds to sleep after a step that computed for `compute_s`, for a rank slowed by `factor`.

    The step should look like it took factor * (compute_s + w.compute_s), plus jitter: a fraction
    w.jitter * u (u uniform in [0, 1)) of that.
    """
    base = compute_s + w.compute_s
    return (factor - 1) * compute_s + factor * w.compute_s + w.jitter * u * base * factor
