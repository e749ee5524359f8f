"""The tables and the checked expectations of parts (a) and (c); their wording is in report.md.tmpl."""

from __future__ import annotations

from experiments.common.report import table
from experiments.common.templates import Prose
from experiments.stability_edge.quadratic import BETA, NEAR, Edge

prose = Prose(__package__)


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
    head = ["setting", "tau", theory_name, "measured stable lr: [stable, unstable]", "midpoint vs theory"]
    return table([*head, "trajectories", "steps each"], rows)


def verdicts(part_a: list[Edge], part_c: list[Edge]) -> list[str]:
    worst = max(part_a, key=lambda e: abs(e.error))
    out = [
        prose(
            "edge_verdict",
            near=f"{NEAR:.0%}",
            worst=f"{worst.error * 100:+.2f}%",
            tau=worst.tau,
            verdict="holds" if abs(worst.error) <= NEAR else "does not hold",
        )
    ]
    for tau in sorted({e.tau for e in part_c}):
        by = {e.mode: e for e in part_c if e.tau == tau}
        if {"none", "server", "shifted"} <= set(by):
            out.append(_momentum_verdict(tau, by))
    return out


def _momentum_verdict(tau: int, by: dict[str, Edge]) -> str:
    none, server, shifted = by["none"], by["server"], by["shifted"]
    return prose(
        "momentum_verdict",
        beta=f"{BETA:g}",
        tau=tau,
        server=f"{server.bracket.mid:.4g}",
        server_below=f"{none.bracket.mid / server.bracket.mid:.1f}",
        none=f"{none.bracket.mid:.4g}",
        theory_below=f"{none.theory / server.theory:.1f}",
        shifted_gain=f"{shifted.bracket.mid / server.bracket.mid:.2f}",
        theory_gain=f"{shifted.theory / server.theory:.2f}",
        near=f"{NEAR:.0%}",
        all_near="yes" if all(abs(e.error) <= NEAR for e in by.values()) else "no",
    )
