"""Figures of the artificial-delay report: accuracy and loss against updates per D (mean over seeds), the
staleness histograms against U{0..D-1}, and the torch against the paper form of AMSGrad."""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullLocator

from experiments.common.stats import curve_on_grid, mean_std

ZOOM = 0.4  # the zoomed accuracy panel shows the first 40% of the updates


def figures(groups, paper, updates: int, early_at: int) -> dict:
    figs = {"curves": curves(groups, updates, "torch form"), "staleness": staleness(groups)}
    if paper:
        figs["forms"] = forms(groups, paper, updates, early_at)
    return figs


def _mean_curve(points, key: str, grid: np.ndarray) -> np.ndarray:
    rows = np.array([curve_on_grid(p.metrics, key, grid) for p in points])
    if not len(rows):
        return np.full(len(grid), np.nan)
    with warnings.catch_warnings():  # grid points before a run's first evaluation are NaN in every seed
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(rows, axis=0)


def curves(groups, updates: int, label: str):
    fig, (ax_a, ax_z, ax_l) = plt.subplots(1, 3, figsize=(12, 3.6))
    grid = np.linspace(0, updates, 201)
    for g in groups:
        acc = _mean_curve(g.ok, "test_acc", grid)
        ax_a.plot(grid, acc, label=f"D={g.delay}")
        zoom = grid <= ZOOM * updates
        ax_z.plot(grid[zoom], acc[zoom], label=f"D={g.delay}")
        ax_l.plot(grid, _mean_curve(g.ok, "train_loss", grid), label=f"D={g.delay}")
    ax_a.set(
        title=f"test accuracy ({label}, mean over seeds)", xlabel="updates", ylabel="test accuracy", ylim=(0.5, 1.0)
    )
    ax_z.set(title=f"the first {ZOOM:.0%} of the updates", xlabel="updates", ylim=(0.3, 1.0))
    ax_l.set(title="training loss (full train set)", xlabel="updates", yscale="log")
    for ax in (ax_a, ax_z, ax_l):
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(9)
    ax_l.legend(fontsize=8)
    return fig


def staleness(groups):
    shown = [g for g in groups if g.delay > 1] or groups
    fig, axes = plt.subplots(1, len(shown), figsize=(2.6 * len(shown), 2.6), squeeze=False)
    for ax, g in zip(axes[0], shown):
        counts = g.staleness_counts()
        n = counts.sum()
        ax.bar(np.arange(len(counts)), counts / max(n, 1), width=1.0, color="tab:blue", alpha=0.7)
        ax.axhline(1 / g.delay, color="k", ls="--", lw=1, label="1/D")
        ax.set(title=f"D={g.delay}: {int(n)} pushes", xlabel="staleness tau", ylim=(0, 2.2 / g.delay))
        ax.title.set_fontsize(9)
    axes[0][0].set_ylabel("fraction of pushes")
    axes[0][0].legend(fontsize=8)
    return fig


def forms(groups, paper, updates: int, early_at: int):
    from experiments.common.stats import value_at

    fig, (ax_f, ax_e, ax_c) = plt.subplots(1, 3, figsize=(12, 3.6))
    for gs, label, shift in ((groups, "torch form", -0.03), (paper, "paper form", 0.03)):
        ds = np.array([g.delay for g in gs], dtype=float)
        for ax, values in (
            (ax_f, lambda g: g.finals()),
            (ax_e, lambda g: [value_at(p.metrics, "test_acc", early_at) for p in g.ok]),
        ):
            stats = [mean_std(values(g)) for g in gs]
            means = [np.nan if m is None else m for m, _, _ in stats]
            errs = [0.0 if s is None else s for _, s, _ in stats]
            ax.errorbar(ds * (1 + shift), means, yerr=errs, marker="o", capsize=3, label=label)
    grid = np.linspace(0, updates, 201)
    for g in paper:
        ax_c.plot(grid, _mean_curve(g.ok, "test_acc", grid), label=f"D={g.delay}")
    ax_f.set(title=f"final test accuracy (@{updates} updates)", xlabel="D (log)", xscale="log")
    ax_e.set(title=f"test accuracy @{early_at} updates", xlabel="D (log)", xscale="log")
    ax_c.set(title="paper form: test accuracy", xlabel="updates", ylim=(0.5, 1.0))
    for ax in (ax_f, ax_e):
        ax.set_xticks([g.delay for g in groups], [str(g.delay) for g in groups])
        ax.xaxis.set_minor_locator(NullLocator())
    for ax in (ax_f, ax_e, ax_c):
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(9)
        ax.legend(fontsize=8)
    return fig
