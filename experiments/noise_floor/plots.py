"""Figures of the noise-floor report: f(x) over the rounds per n (one figure per setting), and the plateaus
against n for every setting, each with plain SGD's floor."""

from __future__ import annotations

import matplotlib.pyplot as plt

from experiments.common.stats import rolling
from experiments.noise_floor.data import Curve, by_label, setting_of, sgd_floor

SMOOTH = 100  # rounds in the rolling mean the curves are drawn with
COLORS = {"EF21-SGD": "tab:red", "EF21-SGDM eta=0.1": "tab:blue", "EF21-SGDM eta=0.01": "tab:green", "EF14-SGD": "0.45"}


def curves_figure(curves: list[Curve]):
    ns = sorted({c.n for c in curves if c.sync})
    plateaus = [c.plateau() for c in curves]
    ylim = (min(plateaus) / 100, max(plateaus) * 10)  # the climb from f = 0 would stretch the axis to 1e-12
    fig, axes = plt.subplots(1, len(ns), figsize=(4.2 * len(ns), 3.4), squeeze=False, sharey=True)
    for ax, n in zip(axes[0], ns):
        for c in sorted([c for c in curves if c.n == n], key=lambda c: (not c.sync, c.key)):
            color = COLORS.get(c.label.replace(", async", ""))
            style = dict(lw=1.0 if c.sync else 0.8, ls="-" if c.sync else "--", color=color)
            if c.method == "ef14":
                style["lw"] = 0.8
            ax.plot(c.rounds, rolling(list(c.f), SMOOTH), label=c.label, **style)
        c0 = curves[0]
        ax.axhline(sgd_floor(c0.dim, c0.lr, c0.sigma, n), color="k", ls=":", lw=0.8, label="plain SGD floor")
        ax.set(title=f"n = {n}", xlabel="round t (async: pushes per worker)", yscale="log", ylim=ylim)
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(9)
    axes[0][0].set_ylabel(f"f(x_t), rolling mean over {SMOOTH} rounds")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"d = {curves[0].dim}, gamma = {curves[0].lr:g}, Top-1, start at the optimum", fontsize=9)
    return fig


def plateau_figure(curves: list[Curve], settings: list[str]):
    fig, axes = plt.subplots(1, len(settings), figsize=(4.6 * len(settings), 3.4), squeeze=False)
    for ax, s in zip(axes[0], settings):
        mine = [c for c in curves if setting_of(c.part) == s and c.sync]
        for label, series in by_label(mine).items():
            ns = sorted(series)
            ax.plot(ns, [series[n].plateau() for n in ns], "o-", label=label, color=COLORS.get(label))
        ns = sorted({c.n for c in mine})
        c0 = mine[0]
        ax.plot(ns, [sgd_floor(c0.dim, c0.lr, c0.sigma, n) for n in ns], "k:", label="plain SGD floor")
        ax.set(
            title=f"{s}: d = {c0.dim}, gamma = {c0.lr:g}",
            xlabel="workers n",
            ylabel="plateau of f",
            xscale="log",
            yscale="log",
        )
        ax.grid(alpha=0.3, which="both")
        ax.title.set_fontsize(9)
    axes[0][-1].legend(fontsize=7)
    return fig
