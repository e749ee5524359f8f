"""The two figures of the stability report: stable lr against tau (parts a and c) with example trajectories,
and the digits MLP's pushed loss and test accuracy under each delay and lr rule (part b)."""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np

from experiments.common.stats import curve_on_grid, rolling
from experiments.stability_edge.delayed_quadratic import theory_threshold
from experiments.stability_edge.mlp_stats import SPIKE_WINDOW, RunStats
from experiments.stability_edge.quadratic import BETA, Edge
from ps.policy import stable_lr_threshold

Groups = list[tuple[str, list[RunStats]]]


MOMENTUM_STYLES = {"server": ("tab:red", "s"), "shifted": ("tab:green", "^"), "none": ("tab:blue", "x")}


def tau_figure(part_a: list[Edge], part_c: list[Edge], example: dict):
    """Left: the measured stable lr against tau with theory; right: trajectories just below and above it."""
    fig, (ax, ax_x) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 2]})
    _edges(ax, part_a, part_c)
    for label, xs in example.items():
        if label != "tau":
            ax_x.plot(np.abs(xs), lw=0.8, label=label)
    ax_x.set(yscale="log", xlabel="server steps", ylabel="|x|", title=f"trajectories at tau = {example['tau'][0]}")
    ax_x.legend(fontsize=8)
    for a in (ax, ax_x):
        a.grid(alpha=0.3)
        a.title.set_fontsize(9)
    return fig


def _edges(ax, part_a: list[Edge], part_c: list[Edge]) -> None:
    taus = np.arange(0, max(e.tau for e in part_a) + 1)
    ax.plot(taus, [stable_lr_threshold(t) for t in taus], "k-", lw=1, label="2 sin(pi/(2(2tau+1)))")
    mids = [e.bracket.mid for e in part_a]
    ax.plot([e.tau for e in part_a], mids, "o", color="tab:blue", ms=6, label="measured: delay, no momentum")
    for mode, (color, marker) in MOMENTUM_STYLES.items():
        mine = [e for e in part_c if e.mode == mode]
        if mode != "none":
            roots = [theory_threshold(int(t), BETA, mode) for t in taus]
            ax.plot(taus, roots, "--", color=color, lw=1, label=f"roots: {mode} momentum {BETA:g}")
        if mine:
            label = f"measured: round robin, {mode if mode != 'none' else 'no'} momentum"
            ax.plot([e.tau for e in mine], [e.bracket.mid for e in mine], marker, color=color, ms=7, label=label)
    ax.set_xscale("symlog", linthresh=1)  # tau = 0, 1, 2, 4, ... 64 evenly apart
    ax.set_xticks([e.tau for e in part_a], [str(e.tau) for e in part_a])
    ax.set(
        yscale="log",
        xlabel="staleness tau",
        ylabel="largest stable lr x curvature",
        title="delayed SGD on x^2/2 through the server: stable lr vs tau",
    )
    ax.legend(fontsize=7)


def mlp_figure(gs: Groups, updates: int):
    taus = sorted({s.tau for _, ss in gs[1:] for s in ss})
    fig, axes = plt.subplots(2, len(taus), figsize=(5.5 * len(taus), 6), squeeze=False)
    grid = np.linspace(0, updates, 201)
    for col, tau in enumerate(taus):
        for label, ss in gs:
            if ss[0].tau not in (0, tau):
                continue
            style = {"color": "k", "lw": 1.5} if ss[0].tau == 0 else {"lw": 1}
            pushed = [
                rolling(
                    [x for x, a in zip(s.point.updates["loss"], s.point.updates["applied"]) if a == 1], SPIKE_WINDOW
                )
                for s in ss
                if s.point.ok and s.point.updates.get("loss")
            ]
            if pushed:
                n = min(len(x) for x in pushed)
                axes[0][col].plot(np.median([x[:n] for x in pushed], axis=0), label=label, **style)
            accs = np.array([curve_on_grid(s.point.metrics, "test_acc", grid) for s in ss if s.point.ok])
            if len(accs):
                with warnings.catch_warnings():  # grid points before a run's first evaluation are NaN
                    warnings.simplefilter("ignore", RuntimeWarning)
                    axes[1][col].plot(grid, np.nanmedian(accs, axis=0), label=label, **style)
        axes[0][col].set(
            title=f"tau = {tau}: pushed minibatch loss (mean of {SPIKE_WINDOW}, median over seeds)",
            yscale="log",
            xlabel="pushes",
        )
        axes[1][col].set(title=f"tau = {tau}: test accuracy (median over seeds)", xlabel="updates", ylim=(0, 1))
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(9)
    axes[1][0].legend(fontsize=8)
    return fig
