"""python -m launch.report RUN_DIR [RUN_DIR ...] [--out DIR] [--labels A B ...]

Compares finished runs: overlaid PNG plots (accuracy and loss against wall time, updates and uplink
bytes; staleness histograms; cumulative uplink) and report.md, a table of each run's summary figures
followed by the images. Exit codes: 0 written, 2 bad arguments (e.g. a folder that is not a run).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from launch.plots import Plots, plot_runs
from launch.tables import FIGURES, figures, fmt, markdown_table
from launch.wording import count
from protocol.runfolder.records import RunSummary, read_record


@dataclass
class Report:
    markdown: Path
    plots: Plots


def is_run_dir(path: Path) -> bool:
    return (path / "summary.json").is_file() or (path / "metrics.jsonl").is_file()


def write_report(runs: list[tuple[str, Path]], out_dir: Path, title: str = "Run comparison") -> Report:
    """Plots of `runs` (label, run folder) overlaid into out_dir, and out_dir/report.md."""
    plots = plot_runs(runs, out_dir)
    rows = []
    for label, run_dir in runs:
        f = figures(read_record(RunSummary, run_dir / "summary.json"))
        rows.append([label, f"[{run_dir.name}]({_rel(run_dir, out_dir)})", *(fmt(f[k]) for k in FIGURES)])
    images = [f"![{p.stem}]({p.name})" for p in plots.paths]
    text = "\n\n".join([f"# {title}", markdown_table(["run", "folder", *FIGURES], rows), *images]) + "\n"
    path = out_dir / "report.md"
    path.write_text(text)
    return Report(path, plots)


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launch.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (each holds summary.json, metrics.jsonl, ...)")
    ap.add_argument("--out", type=Path, help="write here (default: report-<timestamp> next to the first run)")
    ap.add_argument("--labels", nargs="+", help="one legend label per run (default: the folder names)")
    args = ap.parse_args(argv)
    bad = [str(p) for p in args.runs if not is_run_dir(p)]
    if bad:
        print(f"error: not a run folder (no summary.json or metrics.jsonl): {', '.join(bad)}", file=sys.stderr)
        return 2
    labels = args.labels or [p.resolve().name for p in args.runs]
    if len(labels) != len(args.runs):
        print(
            f"error: --labels gives {count(len(labels), 'label')} for {count(len(args.runs), 'run')}", file=sys.stderr
        )
        return 2
    out = args.out or args.runs[0].resolve().parent / f"report-{time.strftime('%Y%m%d-%H%M%S')}"
    report = write_report(list(zip(labels, args.runs)), out)
    print(f"report: {report.markdown} ({len(report.plots.paths)} plots)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
