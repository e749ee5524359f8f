"""async_vs_sync.md: the straggler comparison, the lr grid and the scaling runs, from the run folders. The
prose is in report.md.tmpl; this module computes what goes into it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.async_vs_sync import plots, tables
from experiments.async_vs_sync.analysis import TARGET, RunFigures, figures, real_compute_s, straggler_rank
from experiments.async_vs_sync.observations import observations
from experiments.async_vs_sync.plan import CONFIG, MODES, SCALING, Plan, best_lrs, grid_runs
from experiments.async_vs_sync.runs import read_batch
from experiments.async_vs_sync.scaling_notes import scaling_notes
from experiments.async_vs_sync.tables import of
from experiments.async_vs_sync.verdicts import faster, final_close, scaling_lines
from experiments.common.report import cores, header, save_png
from experiments.common.runs import INVOCATIONS, recorded
from experiments.common.sweeps import COMMANDS, data_sizes
from experiments.common.templates import Prose
from protocol.config.loader import load_experiment

prose = Prose(__package__)
NAME = "async_vs_sync"


def write_report(plan: Plan, base: Path, out: Path, quick: bool) -> Path | None:
    """Write <out>/async_vs_sync.md and its figures from whatever the folder holds (None: no run finished)."""
    straggler = _ok(base, ["straggler"])
    tuned = straggler + _ok(base, ["tuned"])
    grid = grid_runs(plan, base)
    scaling = _ok(base, [f"scaling-{s}" for s in plan.scaling_seeds])
    if not (straggler or grid or scaling):
        return None
    best = best_lrs(plan, base)
    _save_figures(plan, out / "img", straggler, tuned, best, grid, scaling)
    notes = observations(straggler, scaling) + scaling_notes(scaling, plan.scaling_workers)
    timing = prose("timing_quick" if quick else "timing")
    commands = list(recorded(base, COMMANDS).values())
    text = prose(
        "report",
        header=header(prose("title"), quick, f"python -m experiments.{NAME}", commands, base, timing, depth=2),
        setup=setup_text(plan, straggler, scaling),
        expectations="\n".join(expectations(plan, straggler, tuned, best, scaling, grid)),
        straggler=straggler_section(plan, tuned, best) if straggler else "",
        grid=grid_section(plan, grid, best) if grid else "",
        scaling=prose("scaling_section", table=tables.scaling_table(plan, scaling)) if scaling else "",
        notes="\n".join(notes) or prose("no_runs"),
        invocations=invocations(base),
        loads=tables.loads_table(base),
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.md").write_text(text + "\n")
    return out / f"{NAME}.md"


def _save_figures(plan: Plan, img: Path, straggler, tuned, best, grid, scaling) -> None:
    if straggler:
        save_png(plots.curves(straggler, f"lr {plan.lr:g}"), img / f"{NAME}_straggler.png")
        save_png(plots.target_times(_time_groups(plan, tuned, best)), img / f"{NAME}_times.png")
    if grid:
        save_png(plots.lr_grid(grid, plan.lrs), img / f"{NAME}_lr_grid.png")
    if scaling:
        save_png(plots.scaling(scaling, plan.scaling_workers), img / f"{NAME}_scaling.png")


def _ok(base: Path, batches: list[str]) -> list[RunFigures]:
    return [figures(p) for b in batches for p in read_batch(base, b) if p.ok]


def setup_text(plan: Plan, straggler: list[RunFigures], scaling: list[RunFigures]) -> str:
    parts = [straggler_setup(plan, straggler)] if straggler else []
    if scaling:
        v = scaling[0].point.values
        parts.append(
            prose(
                "scaling_setup",
                config=SCALING,
                workers=", ".join(map(str, plan.scaling_workers)),
                batch=v["batch_size"],
                lr=f"{v['lr']:g}",
                compute_s=f"{v['compute_s']:g}",
                compute_ms=f"{1000 * v['compute_s']:g}",
                seconds=f"{v['max_seconds']:g}",
                seeds=_seeds(scaling, plan.scaling_seeds),
            )
        )
    return "\n\n".join(parts)


def straggler_setup(plan: Plan, straggler: list[RunFigures]) -> str:
    v, folder = straggler[0].point.values, straggler[0].point.folder
    task = load_experiment(folder / "config.yaml").task
    n_train, n_test = data_sizes(folder)
    gaps = [r.eval_gap_s for r in straggler if r.eval_gap_s is not None]
    before = [r.t_target - r.t_before for r in straggler if r.t_target is not None and r.t_before is not None]
    real = real_compute_s(straggler)
    return prose(
        "straggler_setup",
        config=CONFIG,
        workers=v["workers"],
        model=task.model,
        hidden=list(task.hidden),
        dataset=task.dataset,
        n_train=n_train,
        n_test=n_test,
        batch=v["batch_size"],
        straggler=straggler_rank(v),
        factor=f"{max(v['slowdown']):g}",
        real_ms="-" if real is None else f"{1000 * real:.2g}",
        cores=cores(),
        lr=f"{plan.lr:g}",
        slowdown=v["slowdown"],
        compute_s=f"{v['compute_s']:g}",
        compute_ms=f"{1000 * v['compute_s']:g}",
        slow_ms=f"{1000 * max(v['slowdown']) * v['compute_s']:g}",
        gradients=plan.gradients,
        sync_steps=plan.gradients // v["workers"],
        sync_batch=v["workers"] * v["batch_size"],
        epochs=f"{plan.gradients * v['batch_size'] / n_train:.0f}",
        seeds=list(plan.seeds),
        order=_order(plan.seeds),
        target=f"{TARGET:.0%}",
        target_value=TARGET,
        eval_every_s=f"{v['eval_every_s']:g}",
        gap=f"{np.median(gaps):.3f}",
        largest_gap="-" if not before else f"{max(before):.3f}",
    )


def expectations(plan: Plan, straggler, tuned, best, scaling, grid) -> list[str]:
    out = []
    if straggler:
        a, s = of(straggler, "async"), of(straggler, "sync")
        same = prose("same_lr", lr=f"{plan.lr:g}")
        out += [faster(a, s, same), final_close(a, s, same)]
        if best and any(lr != plan.lr for lr in best.values()):
            out += _tuned(plan, tuned, best, grid)
        elif best:
            out.append(prose("tuned_is_same", lr=f"{plan.lr:g}"))
    out += scaling_lines(scaling, plan.scaling_workers)
    return out or [prose("no_runs")]


def _tuned(plan: Plan, tuned, best, grid) -> list[str]:
    """Each mode at its best grid lr, on the comparison's seeds; if the tuned batch has not run, say so and
    show what the grid seeds alone give at those lrs."""
    lr = {m: best.get(m, plan.lr) for m in MODES}
    what = prose("best_lrs", lrs=", ".join(f"{m} {lr[m]:g}" for m in MODES))
    a, s = of(tuned, "async", lr["async"]), of(tuned, "sync", lr["sync"])
    if a and s:
        return [faster(a, s, what), final_close(a, s, what)]
    ga, gs = of(grid, "async", lr["async"]), of(grid, "sync", lr["sync"])
    on_grid = prose("on_grid_seeds", what=what)
    return [
        prose(
            "tuned_missing",
            what=what,
            seeds=list(plan.seeds),
            faster=faster(ga, gs, on_grid),
            final=final_close(ga, gs, on_grid),
        )
    ]


def _time_groups(plan: Plan, tuned: list[RunFigures], best: dict) -> dict[str, list[RunFigures]]:
    groups = {f"{m} lr {plan.lr:g}": of(tuned, m, plan.lr) for m in MODES}
    for m in MODES:
        if best.get(m, plan.lr) != plan.lr:
            groups[f"{m} lr {best[m]:g} (tuned)"] = of(tuned, m, best[m])
    return {k: v for k, v in groups.items() if v}


def straggler_section(plan: Plan, tuned: list[RunFigures], best: dict) -> str:
    return prose(
        "straggler_section",
        seeds=list(plan.seeds),
        summary_table=tables.summary_table(_time_groups(plan, tuned, best)),
        runs_table=tables.runs_table(tuned),
    )


def grid_section(plan: Plan, grid: list[RunFigures], best: dict) -> str:
    missing = sorted(set(plan.grid_seeds) - {r.seed for r in grid})
    chosen = ", ".join(f"{m} {lr:g}" for m, lr in best.items())
    if not chosen:
        chosen = prose("none_yet", seeds=", ".join(map(str, missing))) if missing else prose("none_reached")
    return prose(
        "grid_section",
        lrs=", ".join(f"{x:g}" for x in plan.lrs),
        seeds=_seeds(grid, plan.grid_seeds),
        target=f"{TARGET:.0%}",
        chosen=chosen,
        lr=f"{plan.lr:g}",
        comparison_seeds=list(plan.seeds),
        table=tables.grid_table(plan, grid, best),
        gaps=_grid_gaps(plan, grid),
    )


def _grid_gaps(plan: Plan, grid: list[RunFigures]) -> str:
    """Async - sync final accuracy at each grid lr: whether the gap belongs to the mode or to the lr."""
    parts = []
    for lr in plan.lrs:
        fa = [r.final_acc for r in of(grid, "async", lr) if r.final_acc is not None]
        fs = [r.final_acc for r in of(grid, "sync", lr) if r.final_acc is not None]
        if fa and fs:
            parts.append(f"{100 * (np.mean(fa) - np.mean(fs)):+.2f} points at lr {lr:g}")
    return prose("grid_gaps", gaps=", ".join(parts)) if parts else ""


def invocations(base: Path) -> str:
    """The script's command lines that ran batches into the folder, each with when it started."""
    lines = (base / INVOCATIONS).read_text().splitlines() if (base / INVOCATIONS).exists() else []
    shown = [f"    {line.partition(chr(9))[2]}    # {line.partition(chr(9))[0]}" for line in lines]
    return "\n".join(shown) or "    " + prose("not_recorded")


def _seeds(runs: list[RunFigures], planned: tuple[int, ...]) -> str:
    """The seeds that ran, and those of the plan that did not (yet)."""
    ran = sorted({r.seed for r in runs})
    missing = [s for s in planned if s not in ran]
    return prose("seeds_missing", ran=ran, missing=missing) if missing else f"{ran}"


def _order(seeds: tuple[int, ...]) -> str:
    return ", ".join(f"{m} s{s}" for s in seeds[:2] for m in MODES) + (", ..." if len(seeds) > 2 else "")
