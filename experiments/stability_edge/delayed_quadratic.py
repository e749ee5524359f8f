"""Delayed SGD on the 1-D quadratic f(x) = x^2 / 2 (curvature 1) through the real parameter server, run in
this process with fake workers (the pattern of tests/test_staleness.py), and the stable lr found by bisection.

Two ways to make every push tau versions stale:
- delay: one worker, the server answers with its tau-old snapshot (staleness.delay: constant, D = tau + 1);
- round robin: W = tau + 1 workers pushing in turn, each computing at the parameters of its last reply. With
  SGD momentum this is where a server buffer and per-worker ("shifted") buffers differ (docs/algorithms.md,
  Momentum under delay).
The theory column comes from the roots of each recursion's characteristic polynomial (numpy), not a table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from launch.inproc import FakeWorker, join_all, make_config, running_server
from protocol.wire.layout import Layout

ONE = Layout.from_shapes([("x", (1,))])
BLOWUP = 1e6  # |x| beyond this is divergence; stop the trajectory there


def _config(workers: int, lr: float, staleness: dict, optimizer: dict):
    return make_config(
        workers=workers,
        optimizer={"name": "sgd", "lr": lr, **optimizer},
        staleness=staleness,
        run={"max_updates": 10**9, "eval_every_s": 1e6},
        server={"stop_grace_s": 0.05},
    )


def delay_trajectory(lr: float, tau: int, steps: int) -> list[float]:
    """x after each server step; the worker's gradient is x at the tau-old parameters the server sent it."""
    cfg = _config(1, lr, {"delay": "constant", "delay_versions": tau + 1}, {})
    xs: list[float] = []
    with running_server(cfg, model=(ONE, torch.ones(1))) as (server, endpoint, _):
        w = FakeWorker(endpoint, 0, ONE)
        w.hello()
        for _ in range(steps):
            w.push(w.params.clone())  # the gradient of x^2/2 is x
            xs.append(float(server.params))  # the server waits for our next push: safe to read
            if not abs(xs[-1]) < BLOWUP:
                break
        w.close()
    return xs


def round_robin_trajectory(lr: float, tau: int, steps: int, momentum: float = 0.0, mode: str = "server"):
    workers = tau + 1
    optimizer = {"momentum": momentum, "momentum_mode": mode if momentum else "none"}
    xs: list[float] = []
    with running_server(_config(workers, lr, {}, optimizer), model=(ONE, torch.ones(1))) as (server, endpoint, _):
        ws = [FakeWorker(endpoint, r, ONE) for r in range(workers)]
        join_all(ws)
        for step in range(steps):
            w = ws[step % workers]
            w.push(w.params.clone())
            xs.append(float(server.params))
            if not abs(xs[-1]) < BLOWUP:
                break
        for w in ws:
            w.close()
    return xs


def grows(xs: list[float]) -> bool:
    """Unstable: diverged, or the oscillation's envelope over the last tenth exceeds the one before the middle."""
    if not xs or not abs(xs[-1]) < BLOWUP:
        return True
    half, n = len(xs) // 2, len(xs)
    window = max(50, n // 10)  # longer than the slowest oscillation's period (2 (2 tau + 1) steps at the edge)
    mid = max(map(abs, xs[half - window : half]))
    end = max(map(abs, xs[n - window :]))
    return end > mid


@dataclass(frozen=True)
class Bracket:
    lo: float  # largest lr seen stable
    hi: float  # smallest lr seen unstable
    trajectories: int

    @property
    def mid(self) -> float:
        return math.sqrt(self.lo * self.hi)


def stable_lr(simulate: Callable[[float], list[float]], start: float, bisections: int) -> Bracket:
    """Bracket the stability edge by halving or doubling from `start`, then bisect in log space."""
    runs = 1
    if grows(simulate(start)):
        hi, lo = start, start / 2
        while grows(simulate(lo)):
            hi, lo, runs = lo, lo / 2, runs + 1
    else:
        lo, hi = start, start * 2
        while not grows(simulate(hi)):
            lo, hi, runs = hi, hi * 2, runs + 1
    runs += 1
    for _ in range(bisections):
        mid = math.sqrt(lo * hi)
        if grows(simulate(mid)):
            hi = mid
        else:
            lo = mid
        runs += 1
    return Bracket(lo, hi, runs)


# -- theory: the recursions' characteristic roots ---------------------------------------------------------------
def recursion(tau: int, beta: float, mode: str) -> list[tuple[int, float]]:
    """x_{t+1} = sum_k c_k x_{t-k} - a x_{t-tau} (the -a term added by `spectral_radius`), as [(k, c_k)]."""
    if mode == "none" or beta == 0:
        return [(0, 1.0)]
    if mode == "server":  # buf = beta buf + g(x_{t-tau}); x -= lr buf
        return [(0, 1 + beta), (1, -beta)]
    return [(0, 1.0), (tau, beta), (tau + 1, -beta)]  # shifted: + beta (x_{t-tau} - x_{t-tau-1})


def spectral_radius(a: float, tau: int, beta: float, mode: str) -> float:
    terms = recursion(tau, beta, mode)
    lags = max(max(k for k, _ in terms), tau)
    coeffs = np.zeros(lags + 2)  # z^(lags+1) - sum_k c_k z^(lags-k) + a z^(lags-tau)
    coeffs[0] = 1.0
    for k, c in terms:
        coeffs[1 + k] -= c
    coeffs[1 + tau] += a
    return float(np.abs(np.roots(coeffs)).max())


def theory_threshold(tau: int, beta: float = 0.0, mode: str = "none") -> float:
    """The lr (times curvature) where the largest root leaves the unit circle, by bisection."""
    lo, hi = 1e-9, 4.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if spectral_radius(mid, tau, beta, mode) < 1:
            lo = mid
        else:
            hi = mid
    return lo
