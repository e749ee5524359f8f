"""Part (a) and (c) of the stability report: the measured stable lr of delayed SGD on the curvature-1 quadratic
through the real server, against the closed form 2 sin(pi/(2(2 tau + 1))) and, with momentum, the roots."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from experiments.common.report import table
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


def edge_table(edges: list[Edge], theory_name: str) -> str:
    rows = [
        [
            e.setting,
            e.tau,
            f"{e.theory:.5g}",
            f"[{e.bracket.lo:.5g}, {e.bracket.hi:.5g}]",
            f"{e.error * 100:+.2f}%",
            e.bracket.trajectories,
            e.steps,
        ]
        for e in edges
    ]
    return table(
        [
            "setting",
            "tau",
            theory_name,
            "measured stable lr: [stable, unstable]",
            "midpoint vs theory",
            "trajectories",
            "steps each",
        ],
        rows,
    )


def verdicts(part_a: list[Edge], part_c: list[Edge]) -> list[str]:
    worst = max(part_a, key=lambda e: abs(e.error))
    out = [
        f"**Stable lr follows 2 sin(pi/(2(2 tau + 1)))** (every measured edge within {NEAR:.0%}): largest "
        f"deviation {worst.error * 100:+.2f}% at tau = {worst.tau} -> "
        f"{'holds' if abs(worst.error) <= NEAR else 'does not hold'}."
    ]
    for tau in sorted({e.tau for e in part_c}):
        by = {e.mode: e for e in part_c if e.tau == tau}
        if {"none", "server", "shifted"} <= set(by):
            none, server, shifted = by["none"], by["server"], by["shifted"]
            out.append(
                f"**Momentum {BETA:g} at tau = {tau}**: server buffer edge {server.bracket.mid:.4g} = "
                f"{none.bracket.mid / server.bracket.mid:.1f}x below no momentum ({none.bracket.mid:.4g}; theory "
                f"{none.theory / server.theory:.1f}x); shifted (per-worker) buffers tolerate "
                f"{shifted.bracket.mid / server.bracket.mid:.2f}x the server buffer's lr (theory "
                f"{shifted.theory / server.theory:.2f}x); every round-robin edge within {NEAR:.0%} of its roots: "
                f"{'yes' if all(abs(e.error) <= NEAR for e in by.values()) else 'no'}."
            )
    return ["- " + v for v in out]


def figure(part_a: list[Edge], part_c: list[Edge], example: dict):
    fig, (ax, ax_x) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 2]})
    taus = np.arange(0, max(e.tau for e in part_a) + 1)
    ax.plot(taus, [stable_lr_threshold(t) for t in taus], "k-", lw=1, label="2 sin(pi/(2(2tau+1)))")
    ax.plot(
        [e.tau for e in part_a],
        [e.bracket.mid for e in part_a],
        "o",
        color="tab:blue",
        ms=6,
        label="measured: delay, no momentum",
    )
    styles = {"server": ("tab:red", "s"), "shifted": ("tab:green", "^"), "none": ("tab:blue", "x")}
    for mode, (color, marker) in styles.items():
        mine = [e for e in part_c if e.mode == mode]
        if mode != "none":
            ax.plot(
                taus,
                [theory_threshold(int(t), BETA, mode) for t in taus],
                "--",
                color=color,
                lw=1,
                label=f"roots: {mode} momentum {BETA:g}",
            )
        if mine:
            ax.plot(
                [e.tau for e in mine],
                [e.bracket.mid for e in mine],
                marker,
                color=color,
                ms=7,
                label=f"measured: round robin, {mode if mode != 'none' else 'no'} momentum",
            )
    ax.set_xscale("symlog", linthresh=1)  # tau = 0, 1, 2, 4, ... 64 evenly apart
    ax.set_xticks([e.tau for e in part_a], [str(e.tau) for e in part_a])
    ax.set(
        yscale="log",
        xlabel="staleness tau",
        ylabel="largest stable lr x curvature",
        title="delayed SGD on x^2/2 through the server: stable lr vs tau",
    )
    ax.legend(fontsize=7)
    for label, xs in example.items():
        if label != "tau":
            ax_x.plot(np.abs(xs), lw=0.8, label=label)
    ax_x.set(yscale="log", xlabel="server steps", ylabel="|x|", title=f"trajectories at tau = {example['tau'][0]}")
    ax_x.legend(fontsize=8)
    for a in (ax, ax_x):
        a.grid(alpha=0.3)
        a.title.set_fontsize(9)
    return fig
