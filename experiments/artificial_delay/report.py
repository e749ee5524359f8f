"""artificial_delay.md: the setup read back from the runs, the expectations checked, the observations, the
tables and the figures. The prose is in report.md.tmpl; this module computes what goes into it."""

from __future__ import annotations

from pathlib import Path

from experiments.artificial_delay.analysis import (
    DelayGroup,
    by_delay,
    checkpoints,
    results_table,
    staleness_table,
    verdicts,
)
from experiments.artificial_delay.notes import observations
from experiments.artificial_delay.plots import figures
from experiments.common.report import cores, figure_links, header, save_png
from experiments.common.sweeps import Sweep
from experiments.common.templates import Prose
from protocol.config.loader import load_experiment
from worker.tasks.data import load_dataset

prose = Prose(__package__)
NAME = "artificial_delay"


def write_report(torch_form: Sweep, paper_form: Sweep, base: Path, out: Path, quick: bool) -> Path:
    """Write <out>/artificial_delay.md and its figures, <out>/img/artificial_delay_*.png."""
    groups, paper = by_delay(torch_form.points), by_delay(paper_form.points)
    updates = max(int(p.summary["updates"]) for p in torch_form.points if p.ok)
    figs = figures(groups, paper, updates, checkpoints(updates)[1])
    for name, fig in figs.items():
        save_png(fig, out / "img" / f"{NAME}_{name}.png")
    command = f"python -m experiments.{NAME}"
    text = prose(
        "report",
        header=header(prose("title"), quick, command, [torch_form.command, paper_form.command], base),
        setup=setup_text(groups, paper, updates),
        verdicts="\n".join(verdicts(groups, paper, updates)),
        observations="\n".join(observations(groups, paper, checkpoints(updates))),
        torch_table=results_table(groups, updates),
        paper_section=prose("paper_section", table=results_table(paper, updates)) if paper else "",
        staleness_table=staleness_table(groups),
        plots=figure_links(f"{NAME}_", figs),
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.md").write_text(text + "\n")
    return out / f"{NAME}.md"


def setup_text(groups: list[DelayGroup], paper: list[DelayGroup], updates: int) -> str:
    """The setup as the runs' own config.yaml and data set say it was."""
    cfg = load_experiment(next(p for g in groups for p in g.ok).folder / "config.yaml")
    data = load_dataset(cfg.task)
    o, t = cfg.optimizer, cfg.task
    return prose(
        "setup",
        workers=cfg.workers,
        model=t.model,
        hidden=list(t.hidden),
        dataset=t.dataset,
        n_train=len(data.x_train),
        n_test=len(data.x_test),
        test_step=f"{100 / len(data.x_test):.2f}",
        batch=t.batch_size,
        optimizer=o.name,
        lr=f"{o.lr:g}",
        betas=list(o.betas),
        eps=f"{o.eps:g}",
        delay=cfg.staleness.delay,
        delays=[g.delay for g in groups],
        updates=updates,
        seeds=max(len(g.points) for g in groups),
        paper_seeds=max((len(g.points) for g in paper), default=0),
        compute_s=f"{cfg.worker.compute_s:g}",
        epochs=f"{updates * t.batch_size / len(data.x_train):.0f}",
        cores=cores(),
    )
