"""ef21_logreg.md: the setup read back from the runs, the tuning table, the best step size per method over
seeds, the verdicts against the poster's ratios, the levels next to the poster's, and the figures. The prose
is in report.md.tmpl; this module computes what goes into it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from experiments.common.report import header, save_png
from experiments.common.sweeps import recorded_sweep
from experiments.common.templates import Prose
from experiments.ef21_logreg import plots, tables
from experiments.ef21_logreg.bits import TAIL
from experiments.ef21_logreg.plan import Plan, repeat_name, tune_name
from experiments.ef21_logreg.results import Result, best_runs
from experiments.ef21_logreg.verdicts import Best, verdicts

prose = Prose(__package__)
NAME = "ef21_logreg"
HAND_WRITTEN = "## What the measurements say (written by hand"  # starts a closing section kept on rewrites


def write_report(plan: Plan, base: Path, out: Path, quick: bool) -> Path:
    """Write <out>/ef21_logreg.md and its figures, <out>/img/ef21_logreg_{curves,tuning}.png."""
    sweeps = {n: recorded_sweep(base, n) for n in plan.sweeps()}
    tuned = {(b, m): Result.of(sweeps[tune_name(b, m)], b, m) for b, m in plan.grids}
    repeats = {(b, m): Result.of(sweeps[repeat_name(b, m)], b, m) for b, m in plan.repeats()}
    best_by_batch, budgets = best_per_batch(tuned, repeats)
    save_png(plots.figure_curves(best_by_batch, budgets), out / "img" / f"{NAME}_curves.png")
    save_png(plots.figure_tuning(tuned), out / "img" / f"{NAME}_tuning.png")
    commands = [s.command for s in sweeps.values()]
    batches = [
        prose("batch", batch=b, table=tables.results_table(b, best, budgets[b])) for b, best in best_by_batch.items()
    ]
    text = prose(
        "report",
        header=header(prose("title"), quick, f"python -m experiments.{NAME}", commands, base),
        setup=setup_text(plan, tuned),
        tune_seed=plan.tune_seed,
        tuning_table=tables.tuning_table(tuned),
        batches="\n\n".join(batches),
        verdicts="\n".join(verdicts(best_by_batch, budgets)),
        levels_table=tables.levels_table(best_by_batch, budgets),
    )
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{NAME}.md"
    path.write_text(text + "\n" + hand_written(path))
    return path


def best_per_batch(tuned: dict, repeats: dict) -> tuple[dict[int, Best], dict[int, float]]:
    """Per batch size: each method's picked step size with all its runs, and the common bits/n budget."""
    best_by_batch, budgets = {}, {}
    for batch in sorted({b for b, _ in tuned}):
        best = {m: best_runs(res, repeats.get((b, m))) for (b, m), res in tuned.items() if b == batch}
        best_by_batch[batch] = best
        ends = [r.curve.bits[-1] for _, runs in best.values() for r in runs if r.curve.bits.size]
        budgets[batch] = max(ends) if ends else 0.0  # as in Result.of
    return best_by_batch, budgets


def hand_written(path: Path) -> str:
    """The report's hand-written closing section, kept when the generated part is rewritten."""
    old = path.read_text() if path.exists() else ""
    i = old.find(HAND_WRITTEN)
    return "\n" + old[i:] if i >= 0 else ""


def setup_text(plan: Plan, tuned: dict[tuple[int, str], Result]) -> str:
    """The setup as the runs' own config.yaml and records say it was."""
    runs = [r for res in tuned.values() for r in res.runs]
    if not runs:
        return prose("no_runs")
    first = runs[0].point
    cfg = yaml.safe_load((first.folder / "config.yaml").read_text())
    d = int(first.summary["num_params"])
    comp, task, n = cfg["compression"], cfg["task"], int(cfg["workers"])
    k = comp["k"] or max(1, int(np.floor(comp["ratio"] * d)))
    push = float(np.median([r.curve.push_bytes for r in runs]))
    payload = k * 4 + k * 2  # float32 values + delta16 indices (the smallest index coding at this K and d)
    per_eval = [np.median(np.diff(r.curve.rounds)) for r in runs if r.curve.rounds.size > 2]
    return prose(
        "setup",
        d=d,
        reg_lambda=f"{task['reg_lambda']:g}",
        workers=n,
        k=k,
        eta=f"{comp['eta']:g}",
        rounds=", ".join(f"{r} at batch {b}" for b, r in plan.rounds.items()),
        push=f"{push:.0f}",
        payload=payload,
        overhead=f"{push / payload:.0f}",
        dense=4 * d,
        eval_every_s=f"{cfg['run']['eval_every_s']:g}",
        rounds_per_eval=f"{np.median(per_eval):.0f}",
        evals=int(np.median([r.curve.rounds.size for r in runs])),
        tail=f"{TAIL:.0%}",
        tune_seed=plan.tune_seed,
        repeat_seeds=", ".join(map(str, plan.repeat_seeds)) or prose("no_repeat_seeds"),
    )
