"""The pieces every report shares: its header (date, machine, the exact commands), markdown tables and
small PNGs."""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import matplotlib.pyplot as plt

from experiments.common.sweeps import shown
from launch.tables import markdown_table


def add_out_option(ap: argparse.ArgumentParser) -> None:
    """--out DIR. Without it the report goes into the experiment's own folder under runs/ (not committed):
    the committed reports in docs/results record measured runs, and a quick or partial run must not
    replace them unless asked to (--out docs/results)."""
    ap.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="write the report and its img/ here instead of into the experiment folder under runs/ "
        "(--out docs/results replaces the committed report)",
    )


def report_folder(out: Path | None, base: Path) -> Path:
    """Where a report goes: --out if given, else the experiment folder `base` its runs are in."""
    return base if out is None else out


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cores} CPU cores ({cpu}), shared with other jobs; no GPU used; {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, torch {torch.__version__}"
    )


NO_WALL_TIMES = "Wall times are not reported: the cores were shared, so they say little."


def header(
    title: str, script_command: str, commands: list[str], runs: Path, timing: str = NO_WALL_TIMES, depth: int = 1
) -> list[str]:
    """The report's opening: date, machine, and the exact commands that produced it.

    `timing` says what the report makes of wall times; `depth` is how deep below `runs` the run
    folders' config.yaml lie (1 for a sweep's points), for the start date."""
    lines = "\n".join(f"    {c}" for c in commands)
    first = min((p.stat().st_mtime for p in runs.glob("*/" * depth + "config.yaml")), default=time.time())
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(first))
    return [
        f"# {title}",
        f"Sweeps started {started} by `{script_command}`; report written "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
        f"Machine: {machine()}. {timing}",
        f"The launcher commands it ran (run folders in `{shown(runs)}/`; `runs/` is not committed):\n\n{lines}\n\n"
        f"The report is rebuilt from those folders, without new runs, by "
        f"`{script_command} --report-only {shown(runs)}`.",
    ]


def table(header_row: list[str], rows: list[list]) -> str:
    return markdown_table(header_row, [[str(c) for c in r] for r in rows])


def save_png(fig, path: Path) -> Path:
    """A small PNG (the reports keep a handful of ~100 KB images)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
