"""fashion_mnist.md: the <100k-parameter CNN dense and with EF21-SGDM, the straggler runs and the wide CNN, from
the run folders. The prose is in report.md.tmpl; this module computes what goes into it."""

from __future__ import annotations

from pathlib import Path

from experiments.common.report import cores, figure_links, header, save_png
from experiments.common.runs import INVOCATIONS, recorded
from experiments.common.sweeps import COMMANDS, data_sizes
from experiments.common.templates import Prose
from experiments.fashion_mnist import benchmark, plots, tables, verdicts
from experiments.fashion_mnist.analysis import STRAGGLER_TARGET, TARGET, RunFigures, figures
from experiments.fashion_mnist.plan import CONFIG, EF21, SLOWDOWN, WIDE, Plan
from experiments.fashion_mnist.runs import read_runs
from experiments.fashion_mnist.setup import setup_text

prose = Prose(__package__)
NAME = "fashion_mnist"


def write_report(plan: Plan, base: Path, out: Path, quick: bool) -> Path | None:
    """Write <out>/fashion_mnist.md and its figures from whatever the folder holds (None: no run finished)."""
    found = {b: read_runs(base, b) for b in plan.batches()}
    first = next((r for runs in found.values() for r in runs), None)
    if first is None:
        return None
    n_train, n_test = data_sizes(first.folder)
    runs = {b: [figures(r, n_train) for r in rs] for b, rs in found.items()}
    every = [r for b in plan.batches() for r in runs[b]]
    links = _save_figures(runs, every, out / "img")
    timing = prose("timing_quick" if quick else "timing")
    commands = list(recorded(base, COMMANDS).values())
    text = prose(
        "report",
        header=header(prose("title"), quick, f"python -m experiments.{NAME}", commands, base, timing, depth=2),
        config=CONFIG,
        ef21_config=EF21,
        setup=setup_text(runs, n_train, n_test, cores()),
        expectations="\n".join(expectations(runs)),
        seed=first.config.seed,
        runs_table=tables.runs_table(every),
        figures=prose("figures", links=figure_links(f"{NAME}_", links)),
        wide=wide_section(runs["wide"]),
        source=benchmark.SOURCE,
        benchmark_table=tables.benchmark_table(runs["dense"] + runs["ef21"] + runs["wide"]),
        invocations=invocations(base),
        loads=tables.loads_table(base),
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.md").write_text(text + "\n")
    return out / f"{NAME}.md"


def _save_figures(runs: dict[str, list[RunFigures]], every: list[RunFigures], img: Path) -> list[str]:
    """The accuracy figures of the comparisons that ran (their names, for the links) and the bytes chart."""
    panels = {
        "small": (runs["dense"] + runs["ef21"], prose("title_small"), TARGET, 0.8),
        "straggler": (runs["straggler"], prose("title_straggler", slowdown=SLOWDOWN), STRAGGLER_TARGET, 0.7),
        "wide": (runs["wide"], prose("title_wide", config=WIDE), TARGET, 0.5),
    }
    names = []
    for name, (group, title, target, floor) in panels.items():
        if group:
            save_png(plots.accuracy(group, title, target, floor), img / f"{NAME}_{name}.png")
            names.append(name)
    save_png(plots.traffic(every), img / f"{NAME}_bytes.png")
    return names


def expectations(runs: dict[str, list[RunFigures]]) -> list[str]:
    dense = _first(runs["dense"])
    by_mode = {r.run.config.mode: r for r in runs["straggler"]}
    ef21 = [verdicts.ef21_accuracy(dense, None)] if not runs["ef21"] else []
    for run in runs["ef21"]:  # every EF21-SGDM run against dense (the batch tries the server's optimizers)
        ef21.append(verdicts.ef21_accuracy(dense, run))
    ef21.append(verdicts.ef21_bytes(dense, _first(runs["ef21"])))
    return [verdicts.target(dense, CONFIG), *ef21, verdicts.straggler(by_mode.get("async"), by_mode.get("sync"))]


def wide_section(wide: list[RunFigures]) -> str:
    dense = next((r for r in wide if r.run.config.compression.method == "none"), None)
    ef21 = next((r for r in wide if r.run.config.compression.method != "none"), None)
    if dense is None or ef21 is None:
        return prose("wide_row_missing")
    return prose(
        "wide_section",
        params=f"{dense.params:,}",
        dense_per=f"{dense.uplink_per_gradient:,.0f}",
        ef21_per=f"{ef21.uplink_per_gradient:,.0f}",
        ratio=f"{dense.uplink_per_gradient / ef21.uplink_per_gradient:.0f}",
        reply_mib=f"{dense.downlink_bytes / max(dense.updates, 1) / 2**20:.1f}",
        seconds=f"{dense.run.config.run.max_seconds:g}",
        table=tables.wide_table(wide),
    )


def _first(runs: list[RunFigures]) -> RunFigures | None:
    return runs[0] if runs else None


def invocations(base: Path) -> str:
    """The script's command lines that ran batches into the folder, each with when it started."""
    lines = (base / INVOCATIONS).read_text().splitlines() if (base / INVOCATIONS).exists() else []
    shown = [f"    {line.partition(chr(9))[2]}    # {line.partition(chr(9))[0]}" for line in lines]
    return "\n".join(shown) or "    " + prose("not_recorded")
