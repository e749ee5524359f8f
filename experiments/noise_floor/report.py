"""noise_floor.md: per setting a plateau table, the claims checked and f(x) over the rounds; the plateaus
against n; the asynchronous lines; per-run cross-checks; and what the numbers say. The prose is in
report.md.tmpl; this module computes what goes into it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from experiments.common.report import header, save_png
from experiments.common.sweeps import Sweep
from experiments.common.templates import Prose
from experiments.noise_floor import plots, tables
from experiments.noise_floor.data import BLOCKS, Curve, curve, setting_of
from experiments.noise_floor.notes import discussion, setup
from experiments.noise_floor.plan import INVOCATIONS
from experiments.noise_floor.verdicts import verdicts

prose = Prose(__package__)
NAME = "noise_floor"
FLAT = (0.8, 1.25)  # Q4 / Q3 outside this: the averaged half may still hold the climb's transient


def write_report(sweeps: dict[str, Sweep], plan_parts: list[str], base: Path, out: Path, quick: bool) -> Path:
    """Write <out>/noise_floor.md and its figures, <out>/img/noise_floor_*.png."""
    curves = [curve(name, p) for name, s in sweeps.items() for p in s.points if p.ok]
    settings = list(dict.fromkeys(setting_of(c.part) for c in curves))
    by_setting = {s: [c for c in curves if setting_of(c.part) == s] for s in settings}
    for s, mine in by_setting.items():
        save_png(plots.curves_figure(mine), out / "img" / f"{NAME}_curves_{s}.png")
    save_png(plots.plateau_figure(curves, settings), out / "img" / f"{NAME}_plateau.png")
    commands = [sweeps[name].command for name in plan_parts if name in sweeps]
    asyn = [c for c in curves if not c.sync]
    text = prose(
        "report",
        header=header(prose("title"), quick, f"python -m experiments.{NAME}", commands, base),
        invocations=invocations(base),
        setup=setup(curves, plan_parts, sweeps),
        settings="\n\n".join(setting_section(s, mine) for s, mine in by_setting.items()),
        asynchronous=prose("asynchronous", table=tables.async_table(curves)) if asyn else "",
        details=prose("details", table=tables.details_table(curves)),
        discussion=discussion(curves),
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.md").write_text(text + "\n")
    return out / f"{NAME}.md"


def invocations(base: Path) -> str:
    """The --parts invocations that filled the folder (each one locked command on a shared machine)."""
    path = base / INVOCATIONS
    if not path.exists():
        return ""
    lines = "\n".join(f"    {line}" for line in path.read_text().splitlines() if line.strip())
    return prose("invocations", lines=lines)


def setting_section(name: str, curves: list[Curve]) -> str:
    c0 = curves[0]
    ns = sorted({c.n for c in curves if c.sync})
    rounds = ", ".join(f"n={n}: {int(max(c.last_round for c in curves if c.sync and c.n == n)) + 1}" for n in ns)
    return prose(
        "setting",
        name=name,
        dim=c0.dim,
        lr=f"{c0.lr:g}",
        sigma=f"{c0.sigma:g}",
        rounds=rounds,
        blocks=BLOCKS,
        table=tables.plateau_table(curves),
        verdicts="\n".join(verdicts(curves)),
        late_check=late_check(curves),
    )


def late_check(curves: list[Curve]) -> str:
    """Runs whose averaged half is not flat, and the claims again with the last quarter as the plateau."""
    uneven = [c for c in curves if c.sync and not FLAT[0] <= c.quarters() <= FLAT[1]]
    if not uneven:
        return ""
    runs = "; ".join(
        prose(
            "uneven_run",
            label=c.label,
            n=c.n,
            ratio=f"{c.quarters():.2f}",
            half=f"{c.plateau():.3g}",
            quarter=f"{replace(c, window=0.75).plateau():.3g}",
        )
        for c in uneven
    )
    late = [replace(c, window=0.75) for c in curves]
    return prose("late_check", low=f"{FLAT[0]:g}", high=f"{FLAT[1]:g}", runs=runs, verdicts="\n".join(verdicts(late)))
