"""Figures of the async-vs-sync report: accuracy against wall time and gradients, time to the target
per run, the lr grid, and throughput and time to the target against the number of workers."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter, ScalarFormatter

from experiments.async_vs_sync.analysis import TARGET, RunFigures

COLORS = {"async": "tab:blue", "sync": "tab:red"}


def _acc_series(r: RunFigures, x: str) -> tuple[np.ndarray, np.ndarray]:
    per_step = r.workers if r.mode == "sync" else 1
    ms = sorted((m for m in r.point.metrics if m.get("test_acc") is not None), key=lambda m: m["wall_s"])
    xs = [m["wall_s"] if x == "time" else m["updates"] * per_step for m in ms]
    return np.array(xs, dtype=float), np.array([m["test_acc"] for m in ms])


def curves(runs: list[RunFigures], title: str):
    """Test accuracy of every run against wall time (all, and the first stretch) and against gradients."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    reached = [r.t_target for r in runs if r.t_target is not None]
    zoom = 1.3 * max(reached) if reached else None
    for r in runs:
        label = f"{r.mode} seed {r.seed}"
        t, acc = _acc_series(r, "time")
        g, _ = _acc_series(r, "gradients")
        for ax, xs in ((axes[0], t), (axes[1], t), (axes[2], g)):
            ax.plot(xs, acc, color=COLORS[r.mode], lw=0.9, alpha=0.8, label=label if ax is axes[2] else None)
    axes[0].set(title=f"{title}: test accuracy", xlabel="wall time (s)", ylabel="test accuracy", ylim=(0.5, 1.0))
    axes[1].set(title=f"up to 1.3x the slowest time to {TARGET:.0%}", xlabel="wall time (s)", ylim=(0.85, 1.0))
    if zoom:
        axes[1].set_xlim(0, zoom)
    axes[2].set(title="against gradients computed", xlabel="gradients (sync: steps x N)", ylim=(0.85, 1.0))
    for ax in axes:
        ax.axhline(TARGET, color="k", ls=":", lw=0.8)
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(9)
    axes[2].legend(fontsize=7, ncol=2)
    return fig


def target_times(groups: dict[str, list[RunFigures]]):
    """Time to the target of every run, one column per group; the bar spans the evaluation before it."""
    fig, ax = plt.subplots(figsize=(1.2 + 1.3 * len(groups), 3.4))
    for i, runs in enumerate(groups.values()):
        for j, r in enumerate(runs):
            if r.t_target is None:
                continue
            x = i + (j - (len(runs) - 1) / 2) * 0.12
            lo = r.t_target - (r.t_before if r.t_before is not None else 0.0)
            ax.errorbar(x, r.t_target, yerr=[[lo], [0]], fmt="o", color=COLORS[r.mode], ms=4, capsize=2)
        ts = [r.t_target for r in runs if r.t_target is not None]
        if ts:
            ax.hlines(np.mean(ts), i - 0.3, i + 0.3, color="k", lw=1)
    ax.set_xticks(range(len(groups)), list(groups), fontsize=7)
    ax.set(
        ylabel=f"seconds to {TARGET:.0%} test accuracy",
        title="time to the target per run (line: mean; bar: since the previous evaluation)",
    )
    _log_y_if_reached(ax)
    _plain(ax.yaxis)
    ax.title.set_fontsize(8)
    ax.grid(alpha=0.3, which="both")
    return fig


def lr_grid(runs: list[RunFigures], lrs: tuple[float, ...]):
    fig, (ax_t, ax_a) = plt.subplots(1, 2, figsize=(9, 3.4))
    for mode in COLORS:
        mine = [r for r in runs if r.mode == mode]
        for r in mine:
            if r.t_target is not None:
                ax_t.plot(r.lr, r.t_target, "o", color=COLORS[mode], ms=3, alpha=0.6)
            if r.final_acc is not None:
                ax_a.plot(r.lr, r.final_acc, "o", color=COLORS[mode], ms=3, alpha=0.6)
        means_t = [_mean([r.t_target for r in mine if r.lr == lr]) for lr in lrs]
        means_a = [_mean([r.final_acc for r in mine if r.lr == lr]) for lr in lrs]
        ax_t.plot(lrs, means_t, "-", color=COLORS[mode], label=mode)
        ax_a.plot(lrs, means_a, "-", color=COLORS[mode], label=mode)
    ax_t.set(
        xscale="log",
        xlabel="lr",
        ylabel=f"seconds to {TARGET:.0%}",
        title="lr grid: time to the target (points: seeds; missing: not reached)",
    )
    _log_y_if_reached(ax_t)
    ax_a.set(xscale="log", xlabel="lr", ylabel="final test accuracy", title="lr grid: final accuracy (same gradients)")
    _plain(ax_t.yaxis)
    for ax in (ax_t, ax_a):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        ax.title.set_fontsize(9)
    return fig


def scaling(runs: list[RunFigures], workers: tuple[int, ...]):
    """Gradients/s against N with the ideal; time to the target against N with 1-worker time / N."""
    fig, (ax_r, ax_e, ax_t) = plt.subplots(1, 3, figsize=(13, 3.6))
    ns = np.array(workers, dtype=float)
    for mode in COLORS:
        rate = [_mean([r.gradients_per_s for r in runs if r.mode == mode and r.workers == n]) for n in workers]
        ideal = [_mean([r.ideal_gradients_per_s for r in runs if r.mode == mode and r.workers == n]) for n in workers]
        t = [_mean([r.t_target for r in runs if r.mode == mode and r.workers == n]) for n in workers]
        ax_r.plot(ns, rate, "o-", color=COLORS[mode], label=f"{mode} measured")
        ax_r.plot(ns, ideal, "--", color=COLORS[mode], lw=1, label=f"{mode} ideal")
        ax_e.plot(ns, np.array(rate) / np.array(ideal), "o-", color=COLORS[mode], label=mode)
        ax_t.plot(ns, t, "o-", color=COLORS[mode], label=f"{mode} measured")
        if t and np.isfinite(t[0]):
            ax_t.plot(ns, t[0] * ns[0] / ns, "--", color=COLORS[mode], lw=1, label=f"{mode}: N=1 time / N")
    ax_r.set(
        xscale="log",
        yscale="log",
        xlabel="workers N",
        ylabel="gradients/s",
        title=f"throughput (samples/s = {runs[0].batch_size} x gradients/s)",
    )
    ax_e.set(xscale="log", xlabel="workers N", ylabel="measured / ideal", ylim=(0, 1.1), title="efficiency")
    ax_t.set(
        xscale="log",
        xlabel="workers N",
        ylabel=f"seconds to {TARGET:.0%}",
        title="time to the target (mean over seeds)",
    )
    _log_y_if_reached(ax_t)
    _plain(ax_r.yaxis)
    _plain(ax_t.yaxis)
    for ax in (ax_r, ax_t):
        _ticks_125(ax)
    for ax in (ax_r, ax_e, ax_t):
        ax.set_xticks(ns, [str(n) for n in workers])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        ax.title.set_fontsize(9)
    return fig


def _positive_y(ax) -> list[float]:
    return [
        float(y) for line in ax.lines for y in np.asarray(line.get_ydata(), dtype=float) if np.isfinite(y) and y > 0
    ]


def _log_y_if_reached(ax) -> None:
    """Log time axis, unless no run reached the target (a log axis with no positive data cannot be drawn)."""
    if _positive_y(ax):
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, f"no run reached {TARGET:.0%}", transform=ax.transAxes, ha="center", fontsize=8)


def _plain(axis) -> None:
    """Log-scale ticks as plain numbers (5, 10, 20), not powers of ten."""
    axis.set_major_formatter(ScalarFormatter())
    axis.set_minor_formatter(NullFormatter())


def _ticks_125(ax) -> None:
    """Labelled 1-2-5 ticks across a log axis's range (a short range would otherwise show one label)."""
    if ax.get_yscale() != "log" or not _positive_y(ax):  # nothing reached the target: matplotlib's ticks
        return
    lo, hi = ax.get_ylim()
    ticks = [m * 10.0**e for e in range(-2, 5) for m in (1, 2, 5) if lo <= m * 10.0**e <= hi]
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])


def _mean(xs: list) -> float:
    vals = [x for x in xs if x is not None and np.isfinite(x)]
    return float(np.mean(vals)) if vals else float("nan")
