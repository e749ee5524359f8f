"""What the experiment scripts share: sweeps run through the launcher's command line, run folders read
back, the report's header (date, machine, commands) and small PNGs.
"""

from __future__ import annotations

import csv
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from launch.rundir import read_json, read_metrics, read_updates  # noqa: E402
from launch.tables import FIGURES, markdown_table  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
STOP_GRACE_S = 30  # after a timeout, the launcher gets this long to stop its processes (SIGINT) before a kill


@dataclass
class Point:
    """One finished (or failed) point of a sweep: its swept values and its run folder."""

    folder: Path
    values: dict
    ok: bool
    error: str = ""
    summary: dict | None = None
    metrics: list[dict] = field(default_factory=list)
    updates: dict[str, list] = field(default_factory=dict)


@dataclass
class Sweep:
    folder: Path
    command: str  # exactly what ran, for the report
    returncode: int
    points: list[Point]


def shown(path: Path | str) -> str:
    """A path as a reader should type it: relative to the repository when inside it."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def run_sweep(config: str, overrides: list[str], sweep_dir: Path, timeout_s: float) -> Sweep:
    """`python -m launch CONFIG OVERRIDES --run-dir SWEEP_DIR` (a sweep config), bounded by timeout_s."""
    command, rc = run_launcher(config, overrides, sweep_dir, timeout_s)
    return Sweep(sweep_dir, command, rc, read_points(sweep_dir))


def run_launcher(config: str, overrides: list[str], run_dir: Path, timeout_s: float) -> tuple[str, int]:
    """`python -m launch CONFIG OVERRIDES --run-dir RUN_DIR --quiet`, bounded by timeout_s: (command, exit code)."""
    args = [config, *overrides, "--run-dir", shown(run_dir), "--quiet"]
    command = "python -m launch " + " ".join(shlex.quote(a) for a in args)
    print(f"$ {command}", flush=True)
    proc = subprocess.Popen([sys.executable, "-m", "launch", *args], cwd=REPO)
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # the launcher stops every process of its run on Ctrl-C
        try:
            rc = proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        print(f"stopped after {timeout_s:.0f}s (timeout); using what finished", flush=True)
    return command, rc


def read_points(sweep_dir: Path) -> list[Point]:
    """Every point listed in sweep.csv, with its run folder's summary, evaluations and updates."""
    path = sweep_dir / "sweep.csv"
    if not path.exists():
        return []
    with open(path) as f:
        rows = list(csv.DictReader(f))
    known = {"point", "folder", "status", "error"}
    points = []
    for row in rows:
        run = sweep_dir / row["folder"]
        values = {k: yaml.safe_load(v) for k, v in row.items() if k not in known and not _is_figure(k)}
        points.append(
            Point(
                run,
                values,
                row["status"] == "ok",
                row.get("error") or "",
                read_json(run / "summary.json"),
                read_metrics(run),
                read_updates(run),
            )
        )
    return points


def _is_figure(column: str) -> bool:
    return column in FIGURES


COMMANDS = "commands.txt"  # in an experiment's folder: the launcher commands, one per sweep subfolder


def record_sweep(sweep: Sweep, base: Path) -> None:
    """Remember how a sweep was started, so a report can be rebuilt from the folders (--report-only)."""
    base.mkdir(parents=True, exist_ok=True)  # a sweep refused before it started leaves no folder
    with open(base / COMMANDS, "a") as f:
        f.write(f"{sweep.folder.name}\t{sweep.command}\n")


def recorded_sweep(base: Path, name: str) -> Sweep:
    """A sweep finished earlier, read back from its folder and commands.txt."""
    lines = (base / COMMANDS).read_text().splitlines() if (base / COMMANDS).exists() else []
    command = next((c for n, _, c in (line.partition("\t") for line in lines) if n == name), "(not recorded)")
    return Sweep(base / name, command, 0, read_points(base / name))


def value_at(metrics: list[dict], key: str, at: float) -> float | None:
    """metrics[key] linearly interpolated at update count `at`; None before the first evaluation."""
    pts = [(m["updates"], m[key]) for m in metrics if m.get(key) is not None and m.get("updates") is not None]
    if not pts or at < pts[0][0] or at > pts[-1][0]:
        return None
    xs, ys = zip(*pts)
    return float(np.interp(at, xs, ys))


def curve_on_grid(metrics: list[dict], key: str, grid: np.ndarray) -> np.ndarray:
    """metrics[key] interpolated onto `grid` (NaN outside the evaluated range)."""
    return np.array([np.nan if (v := value_at(metrics, key, g)) is None else v for g in grid])


def rolling(xs: list[float], k: int) -> np.ndarray:
    """Mean of the last k values at each position (the per-push losses are noisy minibatch losses)."""
    a = np.asarray(xs, dtype=float)
    c = np.cumsum(np.insert(a, 0, 0.0))
    idx = np.arange(1, len(a) + 1)
    lo = np.maximum(0, idx - k)
    return (c[idx] - c[lo]) / (idx - lo)


def mean_std(values: list[float | None]) -> tuple[float | None, float | None, int]:
    xs = [v for v in values if v is not None and np.isfinite(v)]
    if not xs:
        return None, None, 0
    return float(np.mean(xs)), (float(np.std(xs, ddof=1)) if len(xs) > 1 else None), len(xs)


def pm(values: list[float | None], digits: int = 4, scale: float = 1.0) -> str:
    """'mean ± std' over seeds (std omitted for one value); '(k/n)' if some runs lack the figure."""
    m, s, n = mean_std(values)
    if m is None:
        return "-"
    text = f"{m * scale:.{digits}f}" + ("" if s is None else f" ± {s * scale:.{digits}f}")
    return text if n == len(values) else f"{text} ({n}/{len(values)})"


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
