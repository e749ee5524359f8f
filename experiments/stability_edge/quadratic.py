"""Parts (a) and (c) of the stability study: the stable lr of delayed SGD on the curvature-1 quadratic measured
through the real server (in this process), next to the closed form 2 sin(pi/(2(2 tau + 1))) and, with momentum,
the roots; kept in a JSON file so the report can be rebuilt without measuring again."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from experiments.stability_edge.delayed_quadratic import (
    Bracket,
    delay_trajectory,
    round_robin_trajectory,
    stable_lr,
    theory_threshold,
)
from ps.policy import stable_lr_threshold

BETA = 0.9  # momentum of part (c)
NEAR = 0.01  # a measured edge "matches" theory when within 1%
EXAMPLE_TAU = 16  # the trajectories drawn beside the curve
EXAMPLE_FACTORS = (0.97, 1.03)


@dataclass(frozen=True)
class QuadPlan:
    taus: list[int]  # part (a): one worker, constant delay
    momentum_taus: list[int]  # part (c): round robin over tau + 1 workers
    bisections: int


FULL = QuadPlan([0, 1, 2, 4, 8, 16, 32, 64], [4, 16], 9)
QUICK = QuadPlan([0, 4], [4], 3)


def delay_steps(tau: int) -> int:
    return max(1000, 125 * (tau + 1))  # dozens of periods of the slowest oscillation (2 (2 tau + 1) steps)


def round_robin_steps(tau: int) -> int:
    return max(1500, 350 * (tau + 1))  # momentum 0.9 adds a ~10-step time constant per worker turn


@dataclass
class Edge:
    setting: str  # how the delay is made and which momentum buffer
    mode: str  # none | server | shifted (momentum buffer)
    tau: int
    bracket: Bracket
    theory: float
    steps: int

    @property
    def error(self) -> float:
        return self.bracket.mid / self.theory - 1


def measure(plan: QuadPlan, log=print) -> tuple[list[Edge], list[Edge], dict]:
    """(part a edges, part c edges, example trajectories {label: xs})."""
    part_a, start = [], 1.0  # an arbitrary first guess; halving/doubling finds the edge from there
    for tau in plan.taus:
        steps = delay_steps(tau)
        b = stable_lr(lambda lr, t=tau, n=steps: delay_trajectory(lr, t, n), start, plan.bisections)
        part_a.append(Edge("delay, no momentum", "none", tau, b, stable_lr_threshold(tau), steps))
        log(f"  tau {tau}: stable lr in [{b.lo:.5g}, {b.hi:.5g}] ({b.trajectories} trajectories)")
        start = b.mid  # larger tau, lower edge: start at the previous one and halve
    part_c = []
    for tau in plan.momentum_taus:
        steps = round_robin_steps(tau)
        start = next((e.bracket.mid for e in part_a if e.tau == tau), 0.1)
        for mode, beta in (("none", 0.0), ("server", BETA), ("shifted", BETA)):
            b = stable_lr(
                lambda lr, t=tau, m=mode, be=beta, n=steps: round_robin_trajectory(lr, t, n, be, m),
                start,
                plan.bisections,
            )
            label = f"round robin, {'no momentum' if beta == 0 else f'{mode} momentum {beta:g}'}"
            part_c.append(Edge(label, mode, tau, b, theory_threshold(tau, beta, mode), steps))
            log(f"  tau {tau} {label}: stable lr in [{b.lo:.5g}, {b.hi:.5g}]")
    return part_a, part_c, examples(part_a)


def examples(part_a: list[Edge]) -> dict[str, list[float]]:
    edge = next((e for e in part_a if e.tau == EXAMPLE_TAU), part_a[-1])
    return {
        f"{f:g} x measured edge": delay_trajectory(f * edge.bracket.mid, edge.tau, edge.steps) for f in EXAMPLE_FACTORS
    } | {"tau": [edge.tau]}


def save(path: Path, part_a: list[Edge], part_c: list[Edge], example: dict) -> None:
    """The measured edges and example trajectories, so a report can be rebuilt without re-measuring."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"a": [asdict(e) for e in part_a], "c": [asdict(e) for e in part_c], "example": example})
    )


def load(path: Path) -> tuple[list[Edge], list[Edge], dict]:
    data = json.loads(path.read_text())

    def edges(rows):
        return [Edge(**{**r, "bracket": Bracket(**r["bracket"])}) for r in rows]

    return edges(data["a"]), edges(data["c"]), data["example"]
