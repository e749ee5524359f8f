"""stability_edge.md: parts (a) and (c) on the quadratic, part (b) on the digits MLP, and the two figures.
The prose is in report.md.tmpl; this module computes what goes into it."""

from __future__ import annotations

from pathlib import Path

from experiments.common.report import header, save_png
from experiments.common.templates import Prose
from experiments.stability_edge import mlp_report, plots, quadratic_report
from experiments.stability_edge.delayed_quadratic import BLOWUP
from experiments.stability_edge.mlp import MlpRuns
from experiments.stability_edge.mlp_stats import groups
from experiments.stability_edge.quadratic import BETA, Edge

prose = Prose(__package__)
NAME = "stability_edge"


def write_report(quad: tuple[list[Edge], list[Edge], dict], runs: MlpRuns, base: Path, out: Path, quick: bool) -> Path:
    """Write <out>/stability_edge.md and its figures, <out>/img/stability_edge_{tau,mlp}.png."""
    part_a, part_c, example = quad
    gs = groups(runs)
    updates = max(int(p.summary["updates"]) for p in runs.base.points if p.ok)
    save_png(plots.tau_figure(part_a, part_c, example), out / "img" / f"{NAME}_tau.png")
    save_png(plots.mlp_figure(gs, updates), out / "img" / f"{NAME}_mlp.png")
    commands = [runs.grid.command, runs.base.command, runs.delayed.command]
    text = prose(
        "report",
        header=header(prose("title"), quick, f"python -m experiments.{NAME}", commands, base),
        blowup=f"{BLOWUP:.0e}".replace("e+0", "e").replace("e+", "e"),
        delay_table=quadratic_report.edge_table(part_a, "closed form 2 sin(pi/(2(2tau+1)))"),
        beta=f"{BETA:g}",
        momentum_table=quadratic_report.edge_table(part_c, "theory (roots)"),
        quadratic_verdicts="\n".join(quadratic_report.verdicts(part_a, part_c)),
        mlp_setup=mlp_report.setup_text(runs, updates),
        grid_table=mlp_report.grid_table(runs),
        rules_table=mlp_report.main_table(gs),
        init_table=mlp_report.init_table(runs, gs),
        mlp_verdicts="\n".join(mlp_report.verdicts(gs, mlp_report.n_test_samples(runs))),
        mlp_observations="\n".join(mlp_report.observations(runs, gs)),
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.md").write_text(text + "\n")
    return out / f"{NAME}.md"
