"""python -m launch CONFIG.yaml [key.sub=value ...] [--run-dir DIR]

Validates the experiment, then starts one parameter server, an evaluator and N workers (mode sync:
an evaluator and N torch.distributed ranks, no server), shows progress, and leaves a run folder
(see launch/rundir.py). A config with a non-empty `sweep` runs
every point of its grid instead (launch/sweep_run.py; overrides apply before the expansion).
Exit codes: 0 success, 1 a process (or a sweep point) failed, the run did not finish or its folder could
not be written, 2 bad config or arguments, 130 / 143 / 129 stopped by SIGINT (Ctrl-C) / SIGTERM / SIGHUP.
A failed or stopped run still stops every child in order and leaves its summary.json (status, failure).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from launch.advice import say_advice
from launch.preflight import preflight
from launch.run import RunFailed, run_experiment
from launch.rundir import make_run_dir
from launch.signals import Stopped, StopSignals
from launch.summary import format_summary
from launch.sweep_run import sweep_command
from launch.wording import count
from launch.writes import WriteError, write_text
from protocol.config.loader import load_experiment, read_yaml, resolved_yaml
from protocol.config.schema import ExperimentConfig
from protocol.entry import freeze_imports
from protocol.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launch", description=__doc__.split("\n\n")[0])
    # config optional to argparse only so that its error names config alone, not the optional overrides too
    ap.add_argument("config", nargs="?", help="experiment YAML, e.g. configs/quickstart.yaml")
    ap.add_argument("overrides", nargs="*", help="key.sub=value settings applied on top of the file")
    ap.add_argument("--run-dir", help="write the run here instead of <run.runs_dir>/<name>-<timestamp>")
    ap.add_argument("--quiet", action="store_true", help="no progress line")
    args = ap.parse_intermixed_args(argv)  # overrides may come after the flags too
    if args.config is None:
        ap.error("the following arguments are required: config (an experiment YAML, e.g. configs/quickstart.yaml)")
    try:
        cfg = load_experiment(args.config, args.overrides)
        if not read_yaml(args.config):  # most likely the wrong file: say so rather than train on defaults in silence
            print(f"note: {args.config} sets nothing: every setting not overridden is its default (docs/config.md)")
        preflight(cfg)  # data files, model size against the limits, endpoint, device: now, not in a traceback
        say_advice(cfg)  # settings known to train badly: said, not refused
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with StopSignals() as signals:  # from here on a signal stops the run in order instead of killing the launcher
        if cfg.sweep:
            return sweep_command(cfg, args.run_dir, args.quiet, signals)  # validates every point (data files too)
        return run_one(cfg, args.run_dir, args.quiet, signals)


def run_one(cfg: ExperimentConfig, explicit_dir: str | None, quiet: bool, signals: StopSignals) -> int:
    try:
        run_dir = make_run_dir(cfg.run.runs_dir, cfg.name, explicit_dir)
    except (FileExistsError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"run folder: {run_dir}")
    print(describe(cfg), flush=True)
    try:
        write_text(run_dir / "config.yaml", resolved_yaml(cfg))
        summary = run_experiment(cfg, run_dir, quiet=quiet, signals=signals)
    except (RunFailed, WriteError) as err:
        _point_at_summary(run_dir)
        print(f"error: run failed: {err}", file=sys.stderr)
        return 1
    except Stopped as stopped:
        _point_at_summary(run_dir)
        print(f"{stopped.status} ({stopped.describe()}): every process was stopped", file=sys.stderr)
        return stopped.exit_code
    print(format_summary(summary, run_dir, cfg.run.plots))
    return 0


def describe(cfg: ExperimentConfig) -> str:
    """The line under the run folder: what is about to run."""
    task = cfg.task.factory or f"{cfg.task.model} on {cfg.task.dataset}"
    return (
        f"{count(cfg.workers, 'worker')}, {task}, {cfg.optimizer.name} "
        f"lr {cfg.optimizer.lr:g}, until {count(cfg.run.max_updates, 'update')} or {cfg.run.max_seconds:g}s"
    )


def _point_at_summary(run_dir: Path) -> None:
    """Where a failed or stopped run left its figures, before the error line (which stays the last one)."""
    if (run_dir / "summary.json").exists():
        print(f"results so far: {run_dir}/summary.json", file=sys.stderr)


if __name__ == "__main__":
    freeze_imports()  # the imports are done: no collection need walk them again
    sys.exit(main())
