"""ef21_logreg.md: the setup read back from the runs, the tuning table, the best step size per method over
seeds, the verdicts against the poster's ratios, the levels next to the poster's, and the figures. The prose
is in report.md.tmpl; this module computes what goes into it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from experiments.common.report import header, save_png
from experiments.common.sweeps import data_sizes, recorded_sweep
from experiments.common.templates import Prose
from experiments.ef21_logreg import plots, tables
from experiments.ef21_logreg.bits import TAIL
from experiments.ef21_logreg.plan import Plan, repeat_name, tune_name
from experiments.ef21_logreg.results import Result, best_runs
from experiments.ef21_logreg.verdicts import Best, verdicts
from protocol.wire.encoding import VALUE_DTYPES

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
    save_png(plots.figure_tuning(tuned, plan.tune_seed), out / "img" / f"{NAME}_tuning.png")
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


def index_coding(indices: str, k: int, d: int) -> tuple[str, int]:
    """The sparse index coding a push of k of d entries uses and its bytes ("auto": the smallest, as the
    wire encoding picks it; delta16 fits whenever d < 65536)."""
    sizes = {"int32": 4 * k, "bitmap": (d + 7) // 8}
    if d < 65536:
        sizes["delta16"] = 2 * k
    coding = min(sizes, key=lambda c: (sizes[c], c != "int32")) if indices == "auto" else indices
    coding = coding if coding in sizes else "int32"  # a gap delta16 cannot code: the encoder falls back
    return coding, sizes[coding]


def _shard(n_train: int, workers: int) -> str:
    """Samples per worker when n_train is split into `workers` equal shards (sizes differ by at most one)."""
    low, high = n_train // workers, -(-n_train // workers)
    return str(low) if low == high else f"{low}-{high}"


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
    coding, index_bytes = index_coding(comp["indices"], k, d)
    payload = k * VALUE_DTYPES[comp["values"]].itemsize + index_bytes
    per_eval = [np.median(np.diff(r.curve.rounds)) for r in runs if r.curve.rounds.size > 2]
    n_train, _ = data_sizes(first.folder)
    return prose(
        "setup",
        d=d,
        reg_lambda=f"{task['reg_lambda']:g}",
        workers=n,
        n_train=n_train,
        shard=_shard(n_train, n),
        batches=" or ".join(map(str, plan.rounds)),
        k=k,
        k_rule=prose("k_explicit") if comp["k"] else prose("k_ratio", ratio=f"{comp['ratio']:.0%}"),
        values=comp["values"],
        indices=coding,
        eta=f"{comp['eta']:g}",
        rounds=", ".join(f"{r} at batch {b}" for b, r in plan.rounds.items()),
        push=f"{push:.0f}",
        payload=payload,
        overhead=f"{push / payload:.0f}",
        dense=4 * d,  # the first push of an EF21 worker resets g_i exactly: float32 whatever compression.values
        eval_every_s=f"{cfg['run']['eval_every_s']:g}",
        rounds_per_eval=f"{np.median(per_eval):.0f}",
        evals=int(np.median([r.curve.rounds.size for r in runs])),
        tail=f"{TAIL:.0%}",
        tune_seed=plan.tune_seed,
        repeat_seeds=", ".join(map(str, plan.repeat_seeds)) or prose("no_repeat_seeds"),
    )
