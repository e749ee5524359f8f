"""async_vs_sync.md: the straggler comparison, the lr grid and the scaling runs, from the run folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.async_vs_sync import plots
from experiments.async_vs_sync.analysis import TARGET, RunFigures, figures
from experiments.async_vs_sync.plan import CONFIG, INVOCATIONS, MODES, SCALING, Plan, best_lrs, grid_runs
from experiments.async_vs_sync.runs import LOADS, read_batch, recorded
from experiments.async_vs_sync.scaling_notes import scaling_notes
from experiments.async_vs_sync.verdicts import faster, final_close, observations, scaling_lines
from experiments.common.report import header, save_png, table
from experiments.common.stats import pm
from experiments.common.sweeps import COMMANDS

TIMING = (
    "Wall times are the measurement here, so the batches should run on an otherwise idle machine: these ran "
    "one batch at a time under the development machine's shared lock (`flock -x /tmp/taups-heavy.lock`), "
    "which keeps other heavy jobs off it; the load average before each run is listed at the end."
)


def write_report(plan: Plan, base: Path, out: Path, quick: bool) -> Path | None:
    straggler = _ok(base, ["straggler"])
    tuned = straggler + _ok(base, ["tuned"])
    grid = grid_runs(plan, base)
    scaling = _ok(base, [f"scaling-{s}" for s in plan.scaling_seeds])
    if not (straggler or grid or scaling):
        return None
    best = best_lrs(plan, base)
    img = out / "img"
    body = [
        *setup(plan, straggler, scaling),
        "## Expectations against the measurements",
        "\n".join(expectations(plan, straggler, tuned, best, scaling, grid)),
    ]
    if straggler:
        save_png(plots.curves(straggler, f"lr {plan.lr:g}"), img / "async_vs_sync_straggler.png")
        body += straggler_section(plan, straggler, tuned, best)
        save_png(plots.target_times(_time_groups(plan, tuned, best)), img / "async_vs_sync_times.png")
    if grid:
        save_png(plots.lr_grid(grid, plan.lrs), img / "async_vs_sync_lr_grid.png")
        body += grid_section(plan, grid, best)
    if scaling:
        save_png(plots.scaling(scaling, plan.scaling_workers), img / "async_vs_sync_scaling.png")
        body += scaling_section(plan, scaling)
    notes = observations(straggler, scaling) + scaling_notes(scaling, plan.scaling_workers)
    body += ["## What happened, and why", "\n".join(notes) or "(no runs)", *runs_section(base)]
    title = "Async (APAM) against sync (all-reduce AMSGrad): a straggler, and scaling"
    timing = "A quick smoke run: its times say nothing." if quick else TIMING
    commands = [c for c in recorded(base, COMMANDS).values()]
    text = [header(title, quick, "python -m experiments.async_vs_sync", commands, base, timing, depth=2), *body]
    out.mkdir(parents=True, exist_ok=True)
    (out / "async_vs_sync.md").write_text("\n\n".join(text) + "\n")
    return out / "async_vs_sync.md"


def _ok(base: Path, batches: list[str]) -> list[RunFigures]:
    return [figures(p) for b in batches for p in read_batch(base, b) if p.ok]


def _of(runs: list[RunFigures], mode: str, lr: float | None = None) -> list[RunFigures]:
    return [r for r in runs if r.mode == mode and (lr is None or r.lr == lr)]


def setup(plan: Plan, straggler: list[RunFigures], scaling: list[RunFigures]) -> list[str]:
    lines = ["## Setup"]
    if straggler:
        v, r0 = straggler[0].point.values, straggler[0]
        gaps = [r.eval_gap_s for r in straggler if r.eval_gap_s is not None]
        before = [r.t_target - r.t_before for r in straggler if r.t_target is not None and r.t_before is not None]
        lines.append(
            f"**Straggler runs** (`{CONFIG}`): {v['workers']} workers, mlp [128] on digits "
            f"(1438 train / 359 test samples), batch {v['batch_size']}, AMSGrad (torch form) at the same lr in both "
            f"modes (lr {plan.lr:g}; other lrs below). `worker.slowdown {v['slowdown']}`: rank 3 is the straggler "
            f"(not rank 0, which in sync mode also writes the run's records, so the records do not slow the "
            f"straggler further). `worker.compute_s {v['compute_s']:g}`: every gradient takes "
            f"{1000 * v['compute_s']:g} ms of simulated compute, {1000 * max(v['slowdown']) * v['compute_s']:g} ms on "
            f"rank 3, on top of the real ~0.3 ms; without it the 2 shared cores (4 workers, server, evaluator, "
            f"launcher) would set the pace and a 4x straggler would be 4x of almost nothing. The CPU the runs "
            f"used is measured below."
        )
        lines.append(
            f"Every run stops after the same number of gradients, {plan.gradients} (async: {plan.gradients} pushes, "
            f"each one AMSGrad step on {v['batch_size']} samples; sync: {plan.gradients // v['workers']} steps, each "
            f"on the mean of {v['workers']} gradients = {v['workers'] * v['batch_size']} samples), i.e. "
            f"{plan.gradients * v['batch_size'] / 1438:.0f} epochs: both modes see the same number of samples, "
            f"but sync makes {v['workers']}x fewer, larger-batch steps. At the same lr that favours async per "
            f"gradient, so the lr grid gives each mode its own best lr too. Seeds {list(plan.seeds)}, the modes "
            f"interleaved ({_order(plan.seeds)}), so slow drift of the machine hits both."
        )
        lines.append(
            f"Time runs from the start of training (async: every worker joined; sync: the group's first "
            f"collective), so process start-up counts in neither mode. Time to {TARGET:.0%} = the training-clock "
            f"time of the first evaluated parameter snapshot with test accuracy >= {TARGET} (summary.json's "
            f"`time_to_acc_s`). Snapshots are written every {r0.point.values['eval_every_s']:g} s "
            f"and the evaluator scores the newest about every 0.1 s: consecutive evaluations were a median "
            f"{np.median(gaps):.3f} s apart (up to the target; the largest gap just before a target: "
            f"{_f(max(before) if before else None, 3)} s). That is the resolution of the times below."
        )
    if scaling:
        v = scaling[0].point.values
        lines.append(
            f"**Scaling runs** (`{SCALING}`): N = {', '.join(map(str, plan.scaling_workers))} workers, "
            f"both modes, the same MLP and batch {v['batch_size']}, lr {v['lr']:g}, no straggler, "
            f"`worker.compute_s {v['compute_s']:g}` ({1000 * v['compute_s']:g} ms per gradient), "
            f"{v['max_seconds']:g} s each, seeds {_seeds(scaling, plan.scaling_seeds)}, for each seed N ascending "
            f"with the modes interleaved. gradients/s = gradients that went into the model / training wall time "
            f"(async: pushes applied; sync: steps x N); samples/s = {v['batch_size']} x gradients/s; the ideal "
            f"is the rate if communication cost nothing, N / (compute_s + the measured compute per gradient)."
        )
    return lines


def expectations(plan: Plan, straggler, tuned, best, scaling, grid) -> list[str]:
    out = []
    if straggler:
        a, s = _of(straggler, "async"), _of(straggler, "sync")
        out += [faster(a, s, f"same lr {plan.lr:g}"), final_close(a, s, f"same lr {plan.lr:g}")]
        if best and any(lr != plan.lr for lr in best.values()):
            a, s = _of(tuned, "async", best.get("async", plan.lr)), _of(tuned, "sync", best.get("sync", plan.lr))
            what = "each mode at its best grid lr: " + ", ".join(f"{m} {best.get(m, plan.lr):g}" for m in MODES)
            if a and s:
                out += [faster(a, s, what), final_close(a, s, what)]
            else:  # the tuned batch has not run: say so, and what the grid seeds alone show at those lrs
                ga, gs = _of(grid, "async", best.get("async", plan.lr)), _of(grid, "sync", best.get("sync", plan.lr))
                out += [
                    f"- **Tuned comparison** ({what}, seeds {list(plan.seeds)}): not run, the `tuned` batch is "
                    f"missing from this folder. On the grid seeds alone, at those lrs (the seeds the lrs were "
                    f"chosen on, so a biased look):",
                    "  " + faster(ga, gs, what + ", grid seeds"),
                    "  " + final_close(ga, gs, what + ", grid seeds"),
                ]
        elif best:
            out.append(f"- The lr grid picked lr {plan.lr:g} for both modes: the comparison above is the tuned one.")
    out += scaling_lines(scaling, plan.scaling_workers)
    return out or ["(no runs)"]


def run_rows(runs: list[RunFigures]) -> list[list]:
    rows = []
    for r in runs:
        t = "-" if r.t_target is None else f"{r.t_target:.2f} ({r.t_before or 0:.2f})"
        rows.append(
            [
                r.mode,
                r.seed,
                f"{r.lr:g}",
                t,
                r.grads_at_target or "-",
                _f(r.final_acc, 4),
                f"{r.wall_s:.1f}",
                f"{r.gradients_per_s:.1f} / {r.ideal_gradients_per_s:.1f}",
                f"{r.steps_per_s:.1f}",
                f"{r.staleness_mean:.1f} / {r.staleness_max}",
                _f(r.slow_share, 3) if r.mode == "async" else _f(r.collective_ms, 1),
                _f(r.cpu_cores, 2),
            ]
        )
    return rows


RUN_HEADER = [
    "mode",
    "seed",
    "lr",
    f"s to {TARGET:.0%} (previous eval)",
    f"gradients to {TARGET:.0%}",
    "final acc",
    "wall s",
    "gradients/s / ideal",
    "steps/s",
    "staleness mean / max",
    "async: straggler share; sync: all-reduce ms",
    "CPU cores",
]


def summary_rows(groups: dict[str, list[RunFigures]]) -> list[list]:
    rows = []
    for label, runs in groups.items():
        ts = [r.t_target for r in runs]
        reached = [t for t in ts if t is not None]
        rows.append(
            [
                label,
                len(runs),
                pm(ts, 2),
                f"{min(reached):.2f} - {max(reached):.2f}" if reached else "-",
                pm([r.grads_at_target for r in runs], 0),
                pm([r.final_acc for r in runs], 4),
                pm([r.gradients_per_s for r in runs], 1),
                pm([r.ideal_gradients_per_s for r in runs], 1),
            ]
        )
    return rows


SUMMARY_HEADER = [
    "mode, lr",
    "runs",
    f"s to {TARGET:.0%}",
    "min - max",
    f"gradients to {TARGET:.0%}",
    "final acc",
    "gradients/s",
    "ideal gradients/s",
]


def _time_groups(plan: Plan, tuned: list[RunFigures], best: dict) -> dict[str, list[RunFigures]]:
    groups = {f"{m} lr {plan.lr:g}": _of(tuned, m, plan.lr) for m in MODES}
    for m in MODES:
        if best.get(m, plan.lr) != plan.lr:
            groups[f"{m} lr {best[m]:g} (tuned)"] = _of(tuned, m, best[m])
    return {k: v for k, v in groups.items() if v}


def straggler_section(plan: Plan, straggler, tuned, best) -> list[str]:
    return [
        "## Straggler: the runs",
        f"Mean ± sample std over seeds (seeds {list(plan.seeds)}):\n\n"
        + table(SUMMARY_HEADER, summary_rows(_time_groups(plan, tuned, best))),
        "![test accuracy against wall time and gradients](img/async_vs_sync_straggler.png)\n\n"
        "![time to the target per run](img/async_vs_sync_times.png)",
        "Every run (time to the target: the first evaluation at or above it, in brackets the evaluation before "
        "it; 'ideal' gradients/s: if communication cost nothing):\n\n"
        + table(RUN_HEADER, run_rows(sorted(tuned, key=lambda r: (r.lr, r.seed, r.mode)))),
    ]


def grid_section(plan: Plan, grid: list[RunFigures], best: dict) -> list[str]:
    rows = []
    for m in MODES:
        for lr in plan.lrs:
            runs = _of(grid, m, lr)
            if runs:
                ts = ", ".join("-" if r.t_target is None else f"{r.t_target:.2f}" for r in runs)
                rows.append(
                    [
                        m,
                        f"{lr:g}",
                        ts,
                        pm([r.t_target for r in runs], 2),
                        pm([r.final_acc for r in runs], 4),
                        "**best**" if best.get(m) == lr else "",
                    ]
                )
    missing = sorted(set(plan.grid_seeds) - {r.seed for r in grid})
    chosen = ", ".join(f"{m} {lr:g}" for m, lr in best.items()) or (
        f"none yet (grid seed {', '.join(map(str, missing))} not run)"
        if missing
        else "none (no lr reached the target on every seed)"
    )
    return [
        "## Learning rate grid",
        f"The straggler setup at lr {', '.join(f'{x:g}' for x in plan.lrs)} for each mode, on seeds "
        f"{_seeds(grid, plan.grid_seeds)} (not the comparison's seeds, so the choice is not fitted to them). "
        f"Each mode's best lr is the one with the least mean time to {TARGET:.0%} among those where every "
        f"grid seed reached it: {chosen}. A mode whose best lr differs from {plan.lr:g} is rerun at it on "
        f"seeds {list(plan.seeds)} (the 'tuned' rows above).\n\n"
        + table(["mode", "lr", f"s to {TARGET:.0%} per seed", "mean", "final acc", ""], rows)
        + _grid_gaps(plan, grid),
        "![lr grid](img/async_vs_sync_lr_grid.png)",
    ]


def _grid_gaps(plan: Plan, grid: list[RunFigures]) -> str:
    """Async - sync final accuracy at each grid lr: whether the gap belongs to the mode or to the lr."""
    parts = []
    for lr in plan.lrs:
        fa = [r.final_acc for r in _of(grid, "async", lr) if r.final_acc is not None]
        fs = [r.final_acc for r in _of(grid, "sync", lr) if r.final_acc is not None]
        if fa and fs:
            parts.append(f"{100 * (np.mean(fa) - np.mean(fs)):+.2f} points at lr {lr:g}")
    return (
        ("\n\nFinal accuracy, async - sync, on the grid seeds (the same lr for both modes): " + ", ".join(parts) + ".")
        if parts
        else ""
    )


def scaling_section(plan: Plan, runs: list[RunFigures]) -> list[str]:
    rows = []
    for n in plan.scaling_workers:
        for m in MODES:
            g = [r for r in runs if r.mode == m and r.workers == n]
            one = [r.t_target for r in runs if r.mode == m and r.workers == min(plan.scaling_workers)]
            if not g:
                continue
            tn = [r.t_target for r in g if r.t_target is not None]
            t1 = [t for t in one if t is not None]
            speed = f"{np.mean(t1) / np.mean(tn):.2f}x" if t1 and tn else "-"
            rss = [sum(p["rss_peak_mb"] for p in (r.point.summary or {}).get("processes", {}).values()) for r in g]
            rows.append(
                [
                    n,
                    m,
                    len(g),
                    pm([r.gradients_per_s for r in g], 1),
                    pm([r.ideal_gradients_per_s for r in g], 1),
                    pm([r.efficiency for r in g], 2),
                    pm([r.samples_per_s for r in g], 0),
                    pm([r.steps_per_s for r in g], 1),
                    pm([r.t_target for r in g], 2),
                    speed,
                    pm([r.final_acc for r in g], 4),
                    pm([r.staleness_mean for r in g], 1),
                    pm([r.collective_ms for r in g], 1) if m == "sync" else "-",
                    pm([r.cpu_cores for r in g], 2),
                    f"{max(rss):.0f}",
                ]
            )
    header_row = [
        "N",
        "mode",
        "runs",
        "gradients/s",
        "ideal",
        "efficiency",
        "samples/s",
        "steps/s",
        f"s to {TARGET:.0%}",
        "speed-up vs N=1",
        "final acc",
        "staleness mean",
        "all-reduce ms",
        "CPU cores",
        "peak RSS MB (all)",
    ]
    return [
        "## Scaling with the number of workers",
        "Mean ± sample std over seeds. 'all-reduce ms' is, per sync step, the least time any rank spent "
        "inside the collective (the last rank to arrive waits least, so this is the all-reduce itself). "
        "'peak RSS MB (all)' adds every process's peak (workers, server, evaluator).\n\n" + table(header_row, rows),
        "![scaling](img/async_vs_sync_scaling.png)",
    ]


def runs_section(base: Path) -> list[str]:
    loads = recorded(base, LOADS)
    invocations = (base / INVOCATIONS).read_text().splitlines() if (base / INVOCATIONS).exists() else []
    inv = "\n".join(f"    {line.partition(chr(9))[2]}    # {line.partition(chr(9))[0]}" for line in invocations)
    rows = [[key, *value.split()] for key, value in loads.items()]
    return [
        "## Runs and machine load",
        f"The script invocations that ran the batches into the folder, in order:\n\n{inv or '    (not recorded)'}",
        "Load averages (1, 5, 15 minutes) just before each run started; they include the previous run of the "
        "same batch (a run of these keeps about one core busy), so a 1-minute load well above 1 means "
        "something else was running:\n\n" + table(["run", "load 1 min", "5 min", "15 min"], rows),
    ]


def _seeds(runs: list[RunFigures], planned: tuple[int, ...]) -> str:
    """The seeds that ran, and those of the plan that did not (yet)."""
    ran = sorted({r.seed for r in runs})
    missing = [s for s in planned if s not in ran]
    return f"{ran}" + (f" (planned also {missing}: not run)" if missing else "")


def _order(seeds: tuple[int, ...]) -> str:
    return ", ".join(f"{m} s{s}" for s in seeds[:2] for m in MODES) + (", ..." if len(seeds) > 2 else "")


def _f(x, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
