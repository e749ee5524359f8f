"""PNG plots of one or several runs (several runs are overlaid, one colour each).

metrics.png         test accuracy and losses against wall time and against updates
staleness.png       staleness histogram overall and per worker, staleness and applied lr over time
bytes.png           cumulative uplink bytes against pushes received and against wall time
accuracy_bytes.png  test accuracy and losses against cumulative uplink bytes (what compression buys)
grad_norm.png       ||grad f||^2 against updates and uplink bytes, only for runs that record it
                    (run.eval_grad_norm, or the quadratic): the EF21 papers' measure of progress

Every drawing function returns its figure; `plot_runs` saves them and reports which series each axis
shows (axis title -> legend labels), so callers and tests can tell what was drawn without reading pixels.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from launch.rundir import read_metrics, read_updates  # noqa: E402
from launch.writes import writing  # noqa: E402

RunData = tuple[str, list[dict], dict[str, list]]  # (label, metrics.jsonl rows, updates.csv columns) of one run


@dataclass
class Plots:
    paths: list[Path] = field(default_factory=list)
    series: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # figure -> axis title -> labels


def plot_run(run_dir: Path) -> Plots:
    return plot_runs([(run_dir.name, run_dir)], run_dir / "plots")


def plot_runs(runs: list[tuple[str, Path]], out_dir: Path) -> Plots:
    """Raises WriteError (naming the file) when a plot cannot be saved."""
    with writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    data: list[RunData] = [(label, read_metrics(path), read_updates(path)) for label, path in runs]
    plots = Plots()
    for name, draw in (
        ("metrics", _metrics),
        ("staleness", _staleness),
        ("bytes", _bytes),
        ("accuracy_bytes", _accuracy_bytes),
    ):
        fig = draw(data)
        plots.series[name] = _series(fig)
        plots.paths.append(_save(fig, out_dir / f"{name}.png"))
    if any(x.get("grad_norm_sq") is not None for _, metrics, _ in data for x in metrics):
        fig = _grad_norm(data)
        plots.series["grad_norm"] = _series(fig)
        plots.paths.append(_save(fig, out_dir / "grad_norm.png"))
    return plots


def _metrics(data: list[RunData]) -> Figure:
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for label, metrics, _ in data:
        m = [x for x in metrics if x.get("updates") is not None]
        if not m:
            continue
        wall = [x["wall_s"] for x in m]
        ups = [x["updates"] for x in m]
        acc = [x.get("test_acc") for x in m]
        for col, xs, xlabel in ((0, wall, "wall time (s)"), (1, ups, "updates")):
            if any(a is not None for a in acc):
                axes[0, col].plot(xs, [a if a is not None else float("nan") for a in acc], label=label)
            line = axes[1, col].plot(xs, [x["test_loss"] for x in m], label=f"{label} test")
            axes[1, col].plot(xs, [x["train_loss"] for x in m], "--", color=line[0].get_color(), label=f"{label} train")
            axes[1, col].set_xlabel(xlabel)
    axes[0, 0].set_ylabel("test accuracy")
    axes[1, 0].set_ylabel("loss")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    axes[1, 1].set_yscale("log")
    axes[1, 0].set_yscale("log")
    for ax, size in ((axes[0, 1], 8), (axes[1, 1], 7)):
        if ax.get_legend_handles_labels()[0]:  # a regression run draws no accuracy
            ax.legend(fontsize=size)
    for ax, title in zip(
        axes.flat, ("test accuracy vs wall time", "test accuracy vs updates", "loss vs wall time", "loss vs updates")
    ):
        ax.set_title(title, fontsize=9)
    fig.suptitle("evaluation of parameter snapshots")
    return fig


def _staleness(data: list[RunData]) -> Figure:
    """Histogram overall and per worker, staleness and applied lr over time (one run: lines per worker)."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    (ax_h, ax_w), (ax_t, ax_lr) = axes
    for label, _, upd in data:
        if not upd.get("staleness"):
            continue
        rows = [
            (w, s, t, lr)
            for w, s, t, lr, a in zip(upd["worker"], upd["staleness"], upd["wall_s"], upd["lr"], upd["applied"])
            if a == 1
        ]
        if not rows:
            continue
        stal = [r[1] for r in rows]
        bins = range(0, int(max(stal)) + 2)
        ax_h.hist(stal, bins=bins, histtype="step", density=True, label=label, align="left")
        ax_t.plot([r[2] for r in rows], _rolling_mean(stal, 50), label=label)
        ax_lr.plot([r[2] for r in rows], [r[3] for r in rows], ".", markersize=2, label=label)
        for worker in sorted({int(r[0]) for r in rows}) if len(data) == 1 else []:
            mine = [r[1] for r in rows if int(r[0]) == worker]
            ax_w.hist(mine, bins=bins, histtype="step", density=True, label=f"worker {worker}", align="left")
    ax_h.set(title="staleness histogram", xlabel="staleness (updates)", ylabel="fraction of applied pushes")
    ax_w.set(title="staleness histogram per worker", xlabel="staleness (updates)", ylabel="fraction of its pushes")
    ax_t.set(title="staleness vs wall time", xlabel="wall time (s)", ylabel="staleness, rolling mean of 50")
    ax_lr.set(title="applied lr vs wall time", xlabel="wall time (s)", ylabel="learning rate applied")
    for ax in axes.flat:
        ax.title.set_fontsize(9)
    _finish_axes(axes.flat)
    return fig


def _bytes(data: list[RunData]) -> Figure:
    fig, (ax_u, ax_t) = plt.subplots(1, 2, figsize=(11, 4))
    for label, _, upd in data:
        if not upd.get("bytes"):
            continue
        total, cum = 0.0, []
        for b in upd["bytes"]:
            total += b
            cum.append(total / 2**20)
        ax_u.plot(range(1, len(cum) + 1), cum, label=label)
        ax_t.plot(upd["wall_s"], cum, label=label)
    ax_u.set_xlabel("pushes received")
    ax_t.set_xlabel("wall time (s)")
    ax_u.set_title("uplink vs pushes received", fontsize=9)
    ax_t.set_title("uplink vs wall time", fontsize=9)
    for ax in (ax_u, ax_t):
        ax.set_ylabel("uplink MiB (cumulative)")
    _finish_axes((ax_u, ax_t))
    return fig


def _accuracy_bytes(data: list[RunData]) -> Figure:
    fig, (ax_a, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    for label, metrics, upd in data:
        m = [x for x in metrics if x.get("updates") is not None]
        if not m or not upd.get("bytes"):
            continue
        mib = uplink_mib_at(upd, [x["updates"] for x in m])
        acc = [x.get("test_acc") for x in m]
        if any(a is not None for a in acc):
            ax_a.plot(mib, [a if a is not None else float("nan") for a in acc], label=label)
        ax_l.plot(mib, [x["test_loss"] for x in m], label=f"{label} test")
    ax_a.set_ylabel("test accuracy")
    ax_l.set_ylabel("test loss")
    ax_l.set_yscale("log")
    ax_a.set_title("test accuracy vs uplink", fontsize=9)
    ax_l.set_title("loss vs uplink", fontsize=9)
    for ax in (ax_a, ax_l):
        ax.set_xlabel("uplink MiB (cumulative)")
    _finish_axes((ax_a, ax_l))
    return fig


def _grad_norm(data: list[RunData]) -> Figure:
    fig, (ax_u, ax_b) = plt.subplots(1, 2, figsize=(11, 4))
    for label, metrics, upd in data:
        m = [x for x in metrics if x.get("updates") is not None and x.get("grad_norm_sq") is not None]
        if not m:
            continue
        g = [x["grad_norm_sq"] for x in m]
        ax_u.plot([x["updates"] for x in m], g, label=label)
        if upd.get("bytes"):
            ax_b.plot(uplink_mib_at(upd, [x["updates"] for x in m]), g, label=label)
    ax_u.set_xlabel("updates")
    ax_b.set_xlabel("uplink MiB (cumulative)")
    ax_u.set_title("grad norm vs updates", fontsize=9)
    ax_b.set_title("grad norm vs uplink", fontsize=9)
    for ax in (ax_u, ax_b):
        ax.set_ylabel("||grad f||^2 at the snapshot")
        ax.set_yscale("log")
    _finish_axes((ax_u, ax_b))
    return fig


def uplink_mib_at(upd: dict[str, list], versions: list[int]) -> list[float]:
    """Uplink MiB received until each version was made (by the applied push that produced it)."""
    total, made, cum = 0.0, [], []
    for version, size, applied in zip(upd["version"], upd["bytes"], upd["applied"]):
        total += size
        if applied == 1:
            made.append(version)
            cum.append(total / 2**20)
    out = []
    for v in versions:
        i = bisect_right(made, v)
        out.append(cum[i - 1] if i else 0.0)
    return out


def _finish_axes(axes: Iterable[Axes]) -> None:
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)


def _rolling_mean(xs: list[float], k: int) -> list[float]:
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= k:
            acc -= xs[i - k]
        out.append(acc / min(i + 1, k))
    return out


def _series(fig: Figure) -> dict[str, list[str]]:
    return {ax.get_title(): ax.get_legend_handles_labels()[1] for ax in fig.axes}


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    try:
        with writing(path):  # matplotlib's OSError may not say which file
            fig.savefig(path, dpi=90)
    finally:
        plt.close(fig)
    return path
