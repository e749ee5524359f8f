"""PNG plots of one or several runs (several runs are overlaid, one colour each).

metrics.png         test accuracy and losses against wall time and against updates
staleness.png       staleness histogram of applied pushes, and staleness over time
bytes.png           cumulative uplink bytes against pushes received and against wall time
accuracy_bytes.png  test accuracy and losses against cumulative uplink bytes (what compression buys)

Every drawing function returns its figure; `plot_runs` saves them and reports which series each axis
shows (axis title -> legend labels), so callers and tests can tell what was drawn without reading pixels.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from launch.rundir import read_metrics, read_updates  # noqa: E402


@dataclass
class Plots:
    paths: list[Path] = field(default_factory=list)
    series: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # figure -> axis title -> labels


def plot_run(run_dir: Path) -> Plots:
    return plot_runs([(run_dir.name, run_dir)], run_dir / "plots")


def plot_runs(runs: list[tuple[str, Path]], out_dir: Path) -> Plots:
    out_dir.mkdir(parents=True, exist_ok=True)
    data = [(label, read_metrics(path), read_updates(path)) for label, path in runs]
    plots = Plots()
    for name, draw in (("metrics", _metrics), ("staleness", _staleness), ("bytes", _bytes),
                       ("accuracy_bytes", _accuracy_bytes)):
        fig = draw(data)
        plots.series[name] = _series(fig)
        plots.paths.append(_save(fig, out_dir / f"{name}.png"))
    return plots


def _metrics(data):
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
            axes[1, col].plot(xs, [x["train_loss"] for x in m], "--", color=line[0].get_color(),
                              label=f"{label} train")
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
    for ax, title in zip(axes.flat, ("test accuracy vs wall time", "test accuracy vs updates", "loss vs wall time",
                                      "loss vs updates")):
        ax.set_title(title, fontsize=9)
    fig.suptitle("evaluation of parameter snapshots")
    return fig


def _staleness(data):
    fig, (ax_h, ax_t) = plt.subplots(1, 2, figsize=(11, 4))
    for label, _, upd in data:
        if not upd.get("staleness"):
            continue
        applied = [a == 1 for a in upd["applied"]]
        stal = [s for s, a in zip(upd["staleness"], applied) if a]
        wall = [w for w, a in zip(upd["wall_s"], applied) if a]
        if not stal:
            continue
        top = int(max(stal))
        ax_h.hist(stal, bins=range(0, top + 2), histtype="step", density=True, label=label, align="left")
        ax_t.plot(wall, _rolling_mean(stal, 50), label=label)
    ax_h.set_xlabel("staleness (updates)")
    ax_h.set_ylabel("fraction of applied pushes")
    ax_t.set_xlabel("wall time (s)")
    ax_t.set_ylabel("staleness, rolling mean of 50")
    ax_h.set_title("staleness histogram", fontsize=9)
    ax_t.set_title("staleness vs wall time", fontsize=9)
    _finish_axes((ax_h, ax_t))
    return fig


def _bytes(data):
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


def _accuracy_bytes(data):
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


def _finish_axes(axes) -> None:
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


def _series(fig) -> dict[str, list[str]]:
    return {ax.get_title(): ax.get_legend_handles_labels()[1] for ax in fig.axes}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
