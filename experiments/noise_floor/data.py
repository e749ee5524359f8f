"""The noise-floor runs as curves of f(x) per round, their plateaus, and the numbers the claims are judged by.

f per round comes from updates.csv: every push carries the loss its worker computed, and on the quadratic
that is the exact f(x) at the parameters the gradient was taken at (before the noise is added). In the
synchronous rounds every worker computes at the same x, so rank 0's pushes give f(x_t) for every round t
(base_version = t). In the asynchronous runs every applied push is used, on the axis server steps / n
(pushes per worker). The plateau is the mean f over the last half of the rounds; the evaluator's f of
server snapshots (metrics.jsonl) gives an independent, sparser estimate of the same mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from experiments.common.sweeps import Point
from protocol.config.loader import load_experiment
from protocol.config.schema import CompressionConfig

NOT_SHRINKING = 2.0  # "does not shrink with n": the n_max plateau is at least 1/2 of the n = 1 plateau
SHRINKING = 2.0  # "shrinks as n grows": every step up in n lowers the plateau by at least 2x
RATIO = 10.0  # "EF21-SGDM at least 10x lower than EF21-SGD"
BLOCKS = 5  # batch means over the averaged half, for the plateau's standard error
METHOD_ORDER = {"ef21": 0, "ef21-sgdm": 1, "ef14": 3}


@dataclass
class Curve:
    part: str
    method: str
    eta: float
    n: int
    dim: int
    lr: float
    sigma: float
    sync: bool  # synchronous rounds (apply_every = n with a barrier, or n = 1)
    per_process: int  # worker ranks per worker process
    rounds: np.ndarray  # x: round t (async: server steps / n)
    f: np.ndarray  # f(x_t)
    evals: list[tuple[float, float]]  # (updates, evaluator's f) of every snapshot scored
    summary: dict
    window: float = 0.5  # the plateau averages the rounds after this fraction of the run (0.75: last quarter)
    seed: int = 0
    compression: CompressionConfig | None = None  # the run's uplink, for the report's setup

    @property
    def label(self) -> str:
        name = {"ef21": "EF21-SGD", "ef14": "EF14-SGD"}.get(self.method, f"EF21-SGDM eta={self.eta:g}")
        return name if self.sync else f"{name}, async"

    @property
    def key(self) -> tuple:
        return (METHOD_ORDER.get(self.method, 9), -self.eta)

    @property
    def last_round(self) -> float:
        return float(self.rounds[-1]) if len(self.rounds) else 0.0

    def plateau(self) -> float:
        tail = self.rounds >= self.last_round * self.window
        return float(self.f[tail].mean()) if tail.any() else float("nan")

    def spread(self) -> tuple[float, float]:
        """(std of f over the last half, standard error of its mean from BLOCKS batch means): the first says
        how much f fluctuates around the plateau, the second how well one run pins the plateau down (rough:
        neighbouring blocks are correlated when a block is not much longer than the method's memory)."""
        f = self.f[self.rounds >= self.last_round / 2]
        if len(f) < 2 * BLOCKS:
            return float("nan"), float("nan")
        means = [b.mean() for b in np.array_split(f, BLOCKS)]
        return float(f.std()), float(np.std(means, ddof=1) / np.sqrt(BLOCKS))

    def quarters(self) -> float:
        """Mean f over the last quarter / mean over the third: near 1 when the second half is a plateau."""
        t = self.last_round
        third = (self.rounds >= t / 2) & (self.rounds < 3 * t / 4)
        fourth = self.rounds >= 3 * t / 4
        if not third.any() or not fourth.any():
            return float("nan")
        return float(self.f[fourth].mean() / self.f[third].mean())

    def eval_plateau(self) -> tuple[float, int]:
        """Mean of the evaluator's f over the snapshots of the last half (updates are steps: / n when async)."""
        scale = 1 if self.sync else self.n
        vals = [f for u, f in self.evals if u / scale >= self.last_round / 2]
        return (float(np.mean(vals)) if vals else float("nan")), len(vals)


def setting_of(part: str) -> str:
    """A part's setting (d100-n10-ef: d100)."""
    return part.split("-")[0]


def curve(part: str, point: Point) -> Curve:
    cfg = load_experiment(point.folder / "config.yaml")
    n, st = cfg.workers, cfg.staleness
    sync = n == 1 or (st.barrier and st.apply_every == n)
    u = point.updates
    worker = np.asarray(u["worker"], dtype=int)
    applied = np.asarray(u["applied"]) == 1
    base = np.asarray(u["base_version"], dtype=float)
    loss = np.asarray(u["loss"], dtype=float)
    keep = applied & (worker == 0) if sync else applied
    order = np.argsort(base[keep], kind="stable")
    rounds = base[keep][order] / (1 if sync else n)
    evals = [(m["updates"], m["train_loss"]) for m in point.metrics if m.get("train_loss") is not None]
    return Curve(
        part,
        cfg.compression.method,
        cfg.compression.eta,
        n,
        cfg.task.synthetic.dim,
        cfg.optimizer.lr,
        cfg.task.synthetic.noise,
        sync,
        cfg.worker.per_process,
        rounds,
        loss[keep][order],
        evals,
        point.summary or {},
        seed=cfg.seed,
        compression=cfg.compression,
    )


def sgd_floor(dim: int, lr: float, sigma: float, n: int) -> float:
    """E f of plain SGD (no compression) at stationarity on this problem: x <- (1 - lr) x - lr mean noise,
    so E||x||^2 = lr^2 d sigma^2 / n / (1 - (1 - lr)^2) and f = lr d sigma^2 / (2 n (2 - lr))."""
    return lr * dim * sigma**2 / (2 * n * (2 - lr))


def by_label(curves: list[Curve]) -> dict[str, dict[int, Curve]]:
    """label -> n -> curve, labels in method order."""
    out: dict[str, dict[int, Curve]] = {}
    for c in sorted(curves, key=lambda c: (c.key, c.n)):
        out.setdefault(c.label, {})[c.n] = c
    return out


def slope(series: dict[int, Curve]) -> float | None:
    """Least-squares exponent b of plateau ~ n^b (-1: falls as 1/n; 0: flat)."""
    ns = sorted(series)
    if len(ns) < 2:
        return None
    x, y = np.log([float(n) for n in ns]), np.log([series[n].plateau() for n in ns])
    return float(np.polyfit(x, y, 1)[0])
