"""The artificial-delay plan and its two sweeps through the launcher: the torch form of AMSGrad over every
D and seed, then the paper form."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from experiments.common.sweeps import Sweep, record_sweep, run_sweep

CONFIG = "experiments/artificial_delay/config.yaml"


@dataclass(frozen=True)
class Plan:
    delays: list[int]
    seeds: list[int]
    paper_delays: list[int]
    paper_seeds: list[int]
    updates: int

    @property
    def timeout_s(self) -> float:
        return 60 + len(self.delays) * len(self.seeds) * (45 + self.updates / 100)


FULL = Plan([1, 6, 21, 51, 101], [0, 1, 2], [1, 6, 21, 51, 101], [0, 1], 5000)
QUICK = Plan([1, 6], [0], [6], [0], 300)


def overrides(delays: list[int], seeds: list[int], updates: int) -> list[str]:
    return [f"sweep.staleness.delay_versions={delays}", f"sweep.seed={seeds}", f"run.max_updates={updates}"]


def run_all(plan: Plan, base: Path) -> tuple[Sweep, Sweep]:
    torch_form = run_sweep(CONFIG, overrides(plan.delays, plan.seeds, plan.updates), base / "torch", plan.timeout_s)
    record_sweep(torch_form, base)
    paper_form = run_sweep(
        CONFIG,
        [*overrides(plan.paper_delays, plan.paper_seeds, plan.updates), "optimizer.form=paper"],
        base / "paper",
        plan.timeout_s,
    )
    record_sweep(paper_form, base)
    return torch_form, paper_form
