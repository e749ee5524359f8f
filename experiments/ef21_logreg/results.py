"""The runs of one (batch, method) sweep with their curves against bits/n, the step size picked from them, and
the final ||grad f||^2 each run ends at within the common bits budget."""

from __future__ import annotations

from dataclasses import dataclass

from experiments.common.stats import mean_std
from experiments.common.sweeps import Point, Sweep
from experiments.ef21_logreg.bits import Curve, curve, final


@dataclass
class Run:
    point: Point
    curve: Curve

    @property
    def lr(self) -> float:
        return float(self.point.values["optimizer.lr"])

    @property
    def seed(self) -> int:
        return int(self.point.values["seed"])


@dataclass
class Result:
    """One (batch, method) sweep: its runs, and the bits/n budget they are compared at."""

    batch: int
    method: str
    runs: list[Run]
    budget: float = 0.0  # set by the caller: the common bits/n budget of the comparison

    @classmethod
    def of(cls, sweep: Sweep, batch: int, method: str) -> Result:
        runs = [Run(p, curve(p)) for p in sweep.points if p.ok and p.metrics]
        res = cls(batch, method, runs)
        # the longest run sets the budget: a run that stopped early (diverged) then scores None, not a shorter budget
        res.budget = max((r.curve.bits[-1] for r in runs if r.curve.bits.size), default=0.0)
        return res

    def finals(self, lr: float | None = None) -> list[float | None]:
        return [final(r.curve, self.budget) for r in self.runs if lr is None or r.lr == lr]


def pick(res: Result) -> float | None:
    """The step size with the lowest final ||grad f||^2 (mean over its runs); None if none finished."""
    scored = [(mean_std(res.finals(lr))[0], lr) for lr in sorted({r.lr for r in res.runs})]
    scored = [(v, lr) for v, lr in scored if v is not None]
    return min(scored)[1] if scored else None


def best_runs(res: Result, repeat: Result | None) -> tuple[float | None, list[Run]]:
    """The picked step size and all its runs (the tuning seed plus the repeats)."""
    lr = pick(res)
    runs = [r for r in res.runs if r.lr == lr] + (repeat.runs if repeat else [])
    return lr, runs


def final_of(runs: list[Run], budget: float) -> list[float | None]:
    return [final(r.curve, budget) for r in runs]
