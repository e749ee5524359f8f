"""Figures of the R4 (ii) report: ||grad f||^2 against bits per worker for the best step size of each
method, and the final value against the step size (tuning)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from experiments.common.stats import mean_std
from experiments.ef21_logreg.bits import NAMES, TAIL, on_grid
from experiments.ef21_logreg.results import Result

COLORS = {"ef21": "tab:red", "ef21-sgdm": "tab:blue", "ef21-sgd2m": "tab:green", "ef14": "tab:gray"}


def figure_curves(best_by_batch, budgets: dict[int, float]):
    fig, axes = plt.subplots(1, len(best_by_batch), figsize=(5.2 * len(best_by_batch), 3.8), squeeze=False)
    for ax, (batch, best) in zip(axes[0], best_by_batch.items()):
        grid = np.linspace(0, budgets[batch], 400)
        for method, (lr, runs) in best.items():
            if not runs:
                continue
            ys = np.array([on_grid(r.curve, grid) for r in runs])
            with np.errstate(all="ignore"):
                mean = np.nanmean(ys, axis=0) if len(runs) > 1 else ys[0]
            ax.plot(
                grid,
                mean,
                color=COLORS[method],
                lw=1.1,
                ls="--" if method == "ef14" else "-",
                label=f"{NAMES[method]} gamma {lr:g}",
            )
        ax.set_yscale("log")
        ax.set_xlabel("bits / n (uplink, per worker)")
        ax.set_ylabel("||grad f(x)||^2")
        ax.set_title(f"batch {batch} (mean over {max(len(r) for _, r in best.values())} seeds)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return fig


def figure_tuning(tuned: dict[tuple[int, str], Result], seed: int):
    batches = sorted({b for b, _ in tuned})
    fig, axes = plt.subplots(1, len(batches), figsize=(5.2 * len(batches), 3.4), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for (b, method), res in tuned.items():
            if b != batch:
                continue
            lrs = sorted({r.lr for r in res.runs})
            ys = [mean_std(res.finals(lr))[0] for lr in lrs]
            ax.plot(lrs, [np.nan if y is None else y for y in ys], "o-", color=COLORS[method], label=NAMES[method])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("step size gamma")
        ax.set_ylabel(f"final ||grad f||^2 (last {TAIL:.0%} of bits)")
        ax.set_title(f"tuning, batch {batch}, seed {seed}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return fig
