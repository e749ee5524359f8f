"""Runs' key summary figures as table rows, their mean and spread over repeats, and CSV/markdown output.

Shared by sweeps (one row per point, then one per group of seeds) and reports (one row per run).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from launch.summary import ACC_TARGETS
from protocol.runfolder.records import RunSummary

FIGURES = (
    "final_test_acc",
    "final_test_loss",
    "wall_s",
    "updates",
    "updates_per_s",
    *(f"time_to_acc_{t}" for t in ACC_TARGETS),
    "uplink_bytes",
    "staleness_mean",
)


def figures(summary: RunSummary | None) -> dict[str, float | None]:
    """The key figures of one summary.json (None where missing, e.g. an accuracy never reached)."""
    if summary is None:
        return dict.fromkeys(FIGURES)
    out = {}
    for name in FIGURES:
        if name.startswith("time_to_acc_"):
            out[name] = summary.time_to_acc_s.get(name.removeprefix("time_to_acc_"))
        else:
            out[name] = getattr(summary, name)
    return out


@dataclass(frozen=True)
class Stat:
    mean: float | None
    std: float | None  # sample standard deviation (n - 1); None below two values
    n: int  # how many values were present


def stat(values: list[float | None]) -> Stat:
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        return Stat(None, None, 0)
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return Stat(mean, None, 1)
    return Stat(mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)), len(xs))


def fmt(x: float | int | None) -> str:
    """Compact, readable number: 0.9721, 2.66, 115,946,466; '-' for missing."""
    if x is None:
        return "-"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    if abs(x) >= 10000:
        return f"{x:,.0f}"
    return f"{x:.4g}"


def fmt_stat(s: Stat, expected: int) -> str:
    """'mean ± std'; '(k/n)' when only k of the n runs have the figure (e.g. reached the accuracy)."""
    text = fmt(s.mean) if s.std is None else f"{fmt(s.mean)} ± {fmt(s.std)}"
    return text if s.n == expected else f"{text} ({s.n}/{expected})"


def markdown_table(header: list[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; cells are written as str() gives them."""

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(r) for r in rows)])


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(header)
        out.writerows(["" if v is None else v for v in row] for row in rows)
