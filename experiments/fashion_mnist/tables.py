"""The report's tables: every run's figures, the published benchmark rows beside the measured ones, and the
load before each run."""

from __future__ import annotations

from pathlib import Path

from experiments.common.report import table
from experiments.common.runs import LOADS, recorded
from experiments.fashion_mnist import benchmark
from experiments.fashion_mnist.analysis import STRAGGLER_TARGET, TARGET, RunFigures


def _f(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def mib(n: float) -> str:
    """Bytes as MiB, with enough digits for small values."""
    v = n / 2**20
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def runs_table(runs: list[RunFigures]) -> str:
    header = [
        "run",
        "parameters",
        "wall s",
        "updates",
        "updates/s",
        "gradients/s",
        "epochs",
        "final test acc",
        "best test acc",
        f"s to {STRAGGLER_TARGET:g}",
        f"s to {TARGET:g}",
        "uplink MiB",
        "downlink MiB",
        "uplink bytes per gradient",
    ]
    rows = [
        [
            f"`{r.run.key}`: {r.label}",
            f"{r.params:,}",
            f"{r.wall_s:.0f}",
            r.updates,
            f"{r.updates_per_s:.1f}",
            f"{r.gradients_per_s:.1f}",
            f"{r.epochs:.1f}",
            _f(r.final_acc, 4),
            _f(r.best_acc, 4),
            _f(r.t_straggler_target, 0),
            _f(r.t_target, 0),
            mib(r.uplink_bytes),
            mib(r.downlink_bytes),
            f"{r.uplink_per_gradient:,.0f}",
        ]
        for r in runs
    ]
    return table(header, rows)


def benchmark_table(measured: list[RunFigures]) -> str:
    """The published rows (quoted) and this study's runs (final test accuracy), best first."""
    rows = [
        (b.test_acc, [b.classifier, b.preprocessing, f"{b.test_acc:.3f}", f"published ({b.submitter})"])
        for b in benchmark.ROWS
    ]
    for r in measured:
        if r.final_acc is not None:
            what = f"{r.label}, {r.params:,} parameters, {r.epochs:.1f} epochs in {r.wall_s:.0f} s"
            rows.append((r.final_acc, [what, preprocessing(r), f"{r.final_acc:.4f}", f"measured here (`{r.run.key}`)"]))
    rows.sort(key=lambda row: -row[0])
    return table(["classifier", "preprocessing", "test accuracy", "source"], [row for _, row in rows])


def preprocessing(r: RunFigures) -> str:
    """What a run did to its training images, in the published table's words."""
    extra = {"none": "", "flip": ", random horizontal flip", "flip_shift": ", random horizontal flip and translation"}
    return "standardised pixels" + extra[r.run.config.task.augment]


def loads_table(base: Path) -> str:
    loads = recorded(base, LOADS)
    return table(["run", "load 1 min", "5 min", "15 min"], [[f"`{k}`", *v.split()] for k, v in loads.items()])


def wide_table(runs: list[RunFigures]) -> str:
    header = [
        "run",
        "wall s",
        "updates/s",
        "uplink bytes per gradient",
        "uplink MiB",
        "downlink MiB",
        "epochs",
        "final test acc",
    ]
    rows = [
        [
            f"`{r.run.key}`: {r.label}",
            f"{r.wall_s:.0f}",
            f"{r.updates_per_s:.2f}",
            f"{r.uplink_per_gradient:,.0f}",
            mib(r.uplink_bytes),
            mib(r.downlink_bytes),
            f"{r.epochs:.2f}",
            _f(r.final_acc, 4),
        ]
        for r in runs
    ]
    return table(header, rows)
