"""The pieces every report shares: where it goes (--out, else the experiment folder), its header (date,
machine, the exact commands; the wording is in header.md.tmpl), markdown tables, figure links and small PNGs."""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import matplotlib.pyplot as plt

from experiments.common.sweeps import shown
from experiments.common.templates import Prose
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


COMMON = Prose("experiments.common", "header.md.tmpl")


def cores() -> int:
    """CPU cores this process may use (the machine the report is written on)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


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

    return COMMON(
        "machine",
        cores=cores(),
        cpu=cpu,
        system=platform.system(),
        release=platform.release(),
        python=platform.python_version(),
        torch=torch.__version__,
    )


def utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))


def header(
    title: str,
    quick: bool,
    script_command: str,
    commands: list[str],
    runs: Path,
    timing: str | None = None,
    depth: int = 1,
) -> str:
    """The report's opening: title, date, machine, and the exact commands that produced it.

    `timing` says what the report makes of wall times (default: that they are not reported); `depth` is
    how deep below `runs` the run folders' config.yaml lie (1 for a sweep's points), for the start date."""
    first = min((p.stat().st_mtime for p in runs.glob("*/" * depth + "config.yaml")), default=time.time())
    return COMMON(
        "header",
        title=COMMON("title_quick" if quick else "title", title=title),
        started=utc(first),
        script_command=script_command + (" --quick" if quick else ""),
        written=utc(time.time()),
        machine=machine(),
        timing=COMMON("no_wall_times") if timing is None else timing,
        runs=shown(runs),
        commands="\n".join(f"    {c}" for c in commands),
    )


def figure_links(prefix: str, names: list[str] | dict) -> str:
    """Markdown image links to img/<prefix><name>.png, one paragraph each (the names double as alt text)."""
    return "\n\n".join(f"![{name}](img/{prefix}{name}.png)" for name in names)


def table(header_row: list[str], rows: list[list]) -> str:
    return markdown_table(header_row, [[str(c) for c in r] for r in rows])


def save_png(fig, path: Path) -> Path:
    """A small PNG (the reports keep a handful of ~100 KB images)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
