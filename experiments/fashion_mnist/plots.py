"""Figures of the Fashion-MNIST report: test accuracy against wall time for each comparison (one line per run,
the comparison's target dotted), and the uplink and downlink bytes of every run."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from experiments.fashion_mnist.analysis import RunFigures


def accuracy(runs: list[RunFigures], title: str, target: float, floor: float):
    """Test accuracy against training wall time, one line per run; the y axis starts at `floor` (the first
    evaluations, near chance, would squash the part worth reading)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for r in runs:
        t, acc = r.curve
        ax.plot(t, acc, marker=".", ms=4, lw=1.2, label=f"{r.label} ({r.params:,} parameters)")
    ax.axhline(target, color="k", ls=":", lw=0.8, label=f"target {target:g}")
    ax.set(title=title, xlabel="wall time since training started (s)", ylabel="test accuracy")
    ax.set_ylim(floor, max([target + 0.01, *(max(r.curve[1], default=0) + 0.005 for r in runs)]))
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def traffic(runs: list[RunFigures]):
    """Uplink (pushes) and downlink (replies) MiB of every run, log scale, each bar labelled with its value."""
    fig, ax = plt.subplots(figsize=(1.5 + 1.3 * len(runs), 3.8))
    x = np.arange(len(runs))
    lowest = min((v for r in runs for v in (r.uplink_bytes, r.downlink_bytes) if v > 0), default=2**20) / 2**20
    for offset, name, values in (
        (-0.2, "uplink (pushes)", [r.uplink_bytes for r in runs]),
        (0.2, "downlink (replies)", [r.downlink_bytes for r in runs]),
    ):
        mib = np.array(values, dtype=float) / 2**20
        bars = ax.bar(x + offset, mib, width=0.4, label=name)
        ax.bar_label(bars, labels=[f"{v:,.0f}" if v >= 10 else f"{v:.2g}" for v in mib], fontsize=6)
    ax.set_yscale("log")
    ax.set_ylim(bottom=lowest / 4)  # every bar visibly starts below its top, however close the values are
    ax.set_xticks(x, [r.label.replace(", ", "\n").replace(" ", "\n", 2) for r in runs], fontsize=6)
    ax.set(ylabel="MiB over the whole run", title="bytes through the server, per run")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    return fig
