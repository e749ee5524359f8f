"""The prose of the R4 (ii) report that is computed from the runs: the setup as the run folders recorded it,
and the absolute levels next to the poster's."""

from __future__ import annotations

import numpy as np
import yaml

from experiments.common.stats import mean_std
from experiments.ef21_logreg.bits import NAMES, TAIL, final

# the levels R4 in docs/algorithms.md reads off the poster's MNIST curves: (low, high) of the final ||grad f||^2
POSTER_LEVELS = {
    1: {"ef21": (2e-1, 5e-1), "ef21-sgdm": (1e-2, 1e-2), "ef21-sgd2m": (1e-2, 1e-2), "ef14": (1e-2, 1e-2)},
    128: {"ef21": (3e-3, 3e-3), "ef21-sgdm": (5e-4, 1e-3), "ef21-sgd2m": (2e-4, 4e-4), "ef14": (3e-3, 3e-3)},
}


def setup_text(plan, tuned) -> list[str]:
    runs = [r for res in tuned.values() for r in res.runs]
    if not runs:
        return ["## Setup", "No run finished."]
    first = runs[0].point
    cfg = yaml.safe_load((first.folder / "config.yaml").read_text())
    d = int(first.summary["num_params"])
    comp, task, n = cfg["compression"], cfg["task"], int(cfg["workers"])
    k = comp["k"] or max(1, int(np.floor(comp["ratio"] * d)))
    push = float(np.median([r.curve.push_bytes for r in runs]))
    payload = k * 4 + k * 2  # float32 values + delta16 indices (the smallest index coding at this K and d)
    per_eval = [np.median(np.diff(r.curve.rounds)) for r in runs if r.curve.rounds.size > 2]
    evals = [r.curve.rounds.size for r in runs]
    rounds = ", ".join(f"{r} at batch {b}" for b, r in plan.rounds.items())
    return [
        "## Setup",
        f"Softmax regression (`task.model: logreg`) on scikit-learn's 8x8 digits, d = {d} parameters, with the "
        f"non-convex regulariser lambda sum_j x_j^2/(1+x_j^2), lambda = {task['reg_lambda']:g}. n = {n} workers, "
        f"each sampling only its own shard of one fixed permutation of the 1438 training samples "
        f"(`sampling: shard`, 143-144 samples each); batch B = 1 or 128 per worker per round. Top-K over the "
        f"whole vector with "
        f"K = {k} (1% of d, floor), momentum eta = {comp['eta']:g} for EF21-SGDM and EF21-SGD2M. Synchronous "
        f"rounds (`staleness.apply_every: {n}`, `barrier: true`): the server steps x <- x - gamma g once per round "
        f"on g = mean_i g_i (EF21 family; every worker's first push is its dense g_i^0 = v_i^0 = u_i^0 = the first "
        f"minibatch gradient) or on the mean of the compressed EF14 messages, with plain SGD.",
        f"Budget: a fixed number of rounds per run ({rounds}), so every method sends the same messages. "
        f"bits/n is measured: 8 x the bytes the server received, per worker, message headers included. A "
        f"compressed push is {push:.0f} bytes on the wire, of which {payload} are the K values and indices, so "
        f"the axis is about {push / payload:.0f}x the payload-only count of the papers (the dense first push, "
        f"{4 * d} bytes of values, is counted too). Equal bits/n is therefore equal rounds here.",
        f"||grad f||^2 is the full gradient of the training objective over all 1438 training samples, regulariser "
        f"included (`run.eval_grad_norm: true`), scored by the evaluator on parameter snapshots taken every "
        f"{cfg['run']['eval_every_s']:g} s of wall time: a median of {np.median(per_eval):.0f} rounds between "
        f"evaluations and {int(np.median(evals))} evaluations per run. **Final** = the mean of ||grad f||^2 "
        f"over the evaluations in the last {TAIL:.0%} of the bits budget (the iterates fluctuate at batch 1, "
        f"one evaluation is noisy); the best step size is the one "
        f"with the lowest final value on seed {plan.tune_seed}, and for the EF21 methods it is then run on seeds "
        f"{', '.join(map(str, plan.repeat_seeds)) or '(none in this run)'} (EF14-SGD, a reference, has one seed).",
    ]


def reading_text(best_by_batch, budgets) -> list[str]:
    lines = []
    for batch, best in best_by_batch.items():
        for method, (_, runs) in best.items():
            m = mean_std([final(r.curve, budgets[batch]) for r in runs])[0]
            lo, hi = POSTER_LEVELS[batch][method]
            poster = f"{lo:.0e}" if lo == hi else f"{lo:.0e} to {hi:.0e}"
            level = "-" if m is None else f"{m:.3g}"
            lines.append(f"| {batch} | {NAMES[method]} | {level} | {poster} |")
    head = "| B | method | final here | poster (MNIST, read off the figure) |\n| --- | --- | --- | --- |"
    return [
        "### Absolute levels next to the poster's",
        "The poster's problem is MNIST (d = 7850) and its bits axis counts payload only, so only the order of "
        "magnitude is comparable.",
        head + "\n" + "\n".join(lines),
    ]
