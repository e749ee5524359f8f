"""python -m launch CONFIG.yaml [key.sub=value ...] [--run-dir DIR]

Validates the experiment, then starts one parameter server, an evaluator and N workers (mode sync:
an evaluator and N torch.distributed ranks, no server), shows progress, and leaves a run folder
(see launch/rundir.py). A config with a non-empty `sweep` runs
every point of its grid instead (launch/sweep_run.py; overrides apply before the expansion).
Exit codes: 0 success, 1 a process (or a sweep point) failed or the run did not finish, 2 bad config
or arguments, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys

from launch.run import RunFailed, run_experiment
from launch.rundir import make_run_dir
from launch.sweep_run import sweep_command
from launch.wording import count
from protocol.config.loader import load_experiment, resolved_yaml
from protocol.config.schema import ExperimentConfig
from protocol.errors import ConfigError
from protocol.runfolder.records import RunSummary
from worker.tasks.data import check_data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launch", description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="experiment YAML, e.g. configs/quickstart.yaml")
    ap.add_argument("overrides", nargs="*", help="key.sub=value settings applied on top of the file")
    ap.add_argument("--run-dir", help="write the run here instead of <run.runs_dir>/<name>-<timestamp>")
    ap.add_argument("--quiet", action="store_true", help="no progress line")
    args = ap.parse_args(argv)
    try:
        cfg = load_experiment(args.config, args.overrides)
        if not cfg.sweep:
            check_data(cfg)  # missing or malformed data files: say so now, not in a worker's traceback
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if cfg.sweep:
        return sweep_command(cfg, args.run_dir, args.quiet)  # validates every point (data files too) first
    try:
        run_dir = make_run_dir(cfg.run.runs_dir, cfg.name, args.run_dir)
    except (FileExistsError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    (run_dir / "config.yaml").write_text(resolved_yaml(cfg))
    print(f"run folder: {run_dir}")
    print(describe(cfg), flush=True)
    try:
        summary = run_experiment(cfg, run_dir, quiet=args.quiet)
    except RunFailed as err:
        print(f"\nerror: run failed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: every process was stopped", file=sys.stderr)
        return 130
    print(format_summary(summary, run_dir, cfg.run.plots))
    return 0


def describe(cfg: ExperimentConfig) -> str:
    """The line under the run folder: what is about to run."""
    return (
        f"{count(cfg.workers, 'worker')}, {cfg.task.model} on {cfg.task.dataset}, {cfg.optimizer.name} "
        f"lr {cfg.optimizer.lr:g}, until {count(cfg.run.max_updates, 'update')} or {cfg.run.max_seconds:g}s"
    )


def format_summary(s: RunSummary, run_dir, plots: bool = True) -> str:
    acc = s.final_test_acc
    acc_txt = f"test_acc {acc:.4f}" if acc is not None else f"test_loss {s.final_test_loss}"
    where = f"results: {run_dir}/summary.json" + (f", plots in {run_dir}/plots/" if plots else "")
    return (
        f"done: {count(s.updates, 'update')} in {s.wall_s:.1f}s ({s.updates_per_s:.1f}/s), {acc_txt}, "
        f"staleness mean {s.staleness_mean:.2f} max {s.staleness_max}, uplink {s.uplink_bytes / 2**20:.1f} MiB, "
        # pushes that merely arrived after the stop are normal and not counted (summary.json: pushes_rejected)
        f"{count(s.pushes_refused, 'push', 'pushes')} not applied\n{where}"
    )


if __name__ == "__main__":
    sys.exit(main())
