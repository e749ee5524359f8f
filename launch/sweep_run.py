"""Running a sweep: every point in turn into its own folder, then the tables and the overlaid plots.

<sweep folder>/
    config.yaml          the base config, with its sweep
    <NNN-key=value_...>/ one run folder per point (its config.yaml has the point's values, sweep emptied)
    sweep.csv, sweep_groups.csv, sweep.md   (rewritten after every point, so a long sweep can be watched)
    report/              overlaid plots (if run.plots): all points together when few, else one per group

A failed point is recorded with its error and the sweep goes on; the exit code says if any failed.
A stop signal (SIGINT, SIGTERM, SIGHUP) stops the current point in order (its folder gets its summary) and
the sweep: the point is recorded as stopped in the tables, and no further point starts.
A file of the sweep folder that cannot be written (a full disk) ends the sweep with a message naming it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path

from launch.run import RunFailed, run_experiment
from launch.rundir import make_run_dir
from launch.signals import Stopped, StopSignals
from launch.sweep import SweepPoint, combo_folder, expand_sweep
from launch.sweep_tables import PointResult, group_results, write_tables
from launch.wording import count
from launch.writes import WriteError, write_text
from protocol.config.loader import resolved_yaml
from protocol.config.schema import ExperimentConfig
from protocol.errors import ConfigError
from protocol.runfolder.records import RunSummary

SMALL_SWEEP = 8  # up to this many points share one set of plots; more get one set per group

Runner = Callable[[ExperimentConfig, Path, bool], RunSummary]  # run_experiment, or a stand-in


def run_sweep(
    cfg: ExperimentConfig,
    points: list[SweepPoint],
    sweep_dir: Path,
    quiet: bool = False,
    runner: Runner = run_experiment,
    signals: StopSignals | None = None,
) -> list[PointResult]:
    """Run every point into sweep_dir; tables are rewritten after each. Stopped (KeyboardInterrupt when no
    signals are given) propagates once the stopped point is in the tables; so does WriteError."""
    signals = signals or StopSignals()
    results: list[PointResult] = []
    for point in points:
        signals.check()  # a signal between two points: the next one never starts
        print(f"[{point.index}/{len(points)}] {point.label}", flush=True)
        try:
            result = _run_point(point, sweep_dir / point.folder, quiet, runner)
        except (Stopped, KeyboardInterrupt) as stop:
            results.append(PointResult(point, sweep_dir / point.folder, None, _stop_text(stop)))
            write_tables(sweep_dir, cfg.sweep, results, len(points))
            raise
        print(f"  {_outcome(result)}", flush=True)
        results.append(result)
        write_tables(sweep_dir, cfg.sweep, results, len(points))
    if cfg.run.plots:
        reports = write_sweep_reports(sweep_dir, results)
        write_tables(sweep_dir, cfg.sweep, results, len(points), reports)
    return results


def _stop_text(stop: BaseException) -> str:
    return stop.describe() if isinstance(stop, Stopped) else "stopped by SIGINT"


def _run_point(point: SweepPoint, run_dir: Path, quiet: bool, runner: Runner) -> PointResult:
    try:
        run_dir.mkdir(parents=True)
        write_text(run_dir / "config.yaml", resolved_yaml(point.cfg))
        return PointResult(point, run_dir, runner(point.cfg, run_dir, quiet))
    except (RunFailed, WriteError) as err:
        return PointResult(point, run_dir, None, str(err))
    except Exception as err:  # a bug hit by one point must not lose the rest of a long sweep
        return PointResult(point, run_dir, None, f"{type(err).__name__}: {err}")


def _outcome(r: PointResult) -> str:
    if not r.ok:
        return f"failed: {r.error.splitlines()[0] if r.error else ''}"
    s = r.summary or RunSummary()
    acc = s.final_test_acc
    score = f"test_acc {acc:.4f}" if acc is not None else f"test_loss {s.final_test_loss}"
    return f"done: {score}, {count(s.updates, 'update')} in {s.wall_s:.1f}s -> {r.run_dir}"


def write_sweep_reports(sweep_dir: Path, results: list[PointResult]) -> list[tuple[str, Path]]:
    """Overlaid plots of the successful points; returns (title, report.md) of each report written."""
    from launch.report import write_report  # matplotlib only now, not at the launcher's start

    plan = report_plan(sweep_dir, results)
    return [(title, write_report(runs, folder, title).markdown) for title, runs, folder in plan]


def report_plan(sweep_dir: Path, results: list[PointResult]) -> list[tuple[str, list[tuple[str, Path]], Path]]:
    """(title, [(label, run folder)], report folder): all points in one report when they are few (or no
    point has repeats), else one report per group of seeds, its runs labelled by their seed."""
    ok = [r for r in results if r.ok]
    if not ok:
        return []
    groups = group_results(ok)
    if len(ok) <= SMALL_SWEEP or all(len(g.results) == 1 for g in groups):
        return [("all points", [(r.point.label, r.run_dir) for r in ok], sweep_dir / "report")]
    plan = []
    for i, g in enumerate(groups, 1):
        runs = [(r.point.label.removeprefix(g.label).strip() or r.point.label, r.run_dir) for r in g.results]
        plan.append((g.label, runs, sweep_dir / "report" / combo_folder(i, g.results[0].point.group)))
    return plan


def sweep_folder_name(name: str) -> str:
    """<name>-sweep, unless the name already says sweep (configs/sweep.yaml: sweep-<stamp>, not sweep-sweep-)."""
    return name if name.lower().endswith("sweep") else f"{name}-sweep"


def sweep_command(cfg: ExperimentConfig, run_dir: str | None, quiet: bool, signals: StopSignals | None = None) -> int:
    """`python -m launch CONFIG` when the config has a sweep. Exit codes as for one run."""
    try:
        points = expand_sweep(cfg)
        sweep_dir = make_run_dir(cfg.run.runs_dir, sweep_folder_name(cfg.name), run_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (FileExistsError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"sweep folder: {sweep_dir}\n{count(len(points), 'point')} over {', '.join(cfg.sweep)}", flush=True)
    runner = functools.partial(run_experiment, signals=signals)
    try:
        write_text(sweep_dir / "config.yaml", resolved_yaml(cfg))
        results = run_sweep(cfg, points, sweep_dir, quiet, runner, signals)
    except WriteError as err:
        print(f"error: sweep stopped: {err}", file=sys.stderr)
        return 1
    except (Stopped, KeyboardInterrupt) as stop:
        how = f"{stop.status} ({stop.describe()})" if isinstance(stop, Stopped) else "interrupted"
        print(f"\n{how}: every process was stopped; finished points are in {sweep_dir}/sweep.md", file=sys.stderr)
        return stop.exit_code if isinstance(stop, Stopped) else 130
    return _sweep_exit(results, sweep_dir)


def _sweep_exit(results: list[PointResult], sweep_dir: Path) -> int:
    failed = [r for r in results if not r.ok]
    print(
        f"sweep done: {len(results) - len(failed)} of {count(len(results), 'point')} succeeded; "
        f"results: {sweep_dir}/sweep.md, sweep.csv",
        flush=True,
    )
    if failed:
        names = ", ".join(r.point.folder for r in failed)
        print(f"error: {count(len(failed), 'point')} failed: {names}", file=sys.stderr)
        return 1
    return 0
