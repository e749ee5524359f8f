"""summary.json: the final figures of a run, from the server's summary, the evaluations and psutil.

python -m launch.summary RUN_DIR writes summary.json (and the plots) for a run whose processes were started by hand
(python -m launch.prepare) once its server has ended, and prints the launcher's final line. Exit codes: 0,
1 for a failed run (a shard left no summary: status failed), 2 for a folder that is not a prepared run (a
launcher's run folder is left alone), whose server has not ended or whose server_summary.json is corrupt.

A failed or stopped run gets one too (status, failure), with whatever the server and the evaluator left:
when there is no server_summary.json (a sync group that lost a rank cannot finish; a server killed after
its grace), the last status.json gives the counts it has (updates, pushes, wall time, staleness max).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from launch.outcome import Outcome
from launch.rundir import read_metrics
from launch.wording import count
from launch.writes import WriteError, write_record_file
from protocol.config.loader import load_experiment
from protocol.config.schema import ExperimentConfig
from protocol.errors import ConfigError
from protocol.runfolder.records import RunSummary, ServerSummary, Status, read_record

ACC_TARGETS = (0.9, 0.95, 0.97)
AFTER_THE_STOP = "stopped"  # updates.csv reason of a push that only arrived after the run had ended


def time_to_accuracy(metrics: list[dict], target: float) -> float | None:
    for m in metrics:
        acc = m.get("test_acc")
        if acc is not None and acc >= target:
            return m["wall_s"]
    return None


def build_summary(
    run_dir: Path,
    cfg: ExperimentConfig,
    processes: dict,
    outcome: Outcome | None = None,
    write_errors: list[str] | None = None,
) -> RunSummary:
    """write_errors: the launcher's own failed writes (the server's come from server_summary.json)."""
    outcome = outcome or Outcome()
    server = read_record(ServerSummary, run_dir / "server_summary.json") or ServerSummary()
    s = RunSummary(
        name=cfg.name,
        mode=cfg.mode,
        workers=cfg.workers,
        optimizer=cfg.optimizer.name,
        processes=processes,
        status=outcome.status,
        failure=outcome.failure,
        write_errors=[*server.write_errors, *(write_errors or [])],
    )
    _add_server_figures(s, server)
    if not (run_dir / "server_summary.json").exists():
        _add_last_status(s, read_record(Status, run_dir / "status.json"))
    _add_evaluations(s, read_metrics(run_dir))
    return s


def _add_last_status(s: RunSummary, status: Status | None) -> None:
    if status is None:
        return
    s.updates = status.updates
    s.wall_s = status.wall_s
    s.updates_per_s = status.updates / status.wall_s if status.wall_s else 0.0
    s.pushes_received = status.pushes_received
    s.pushes_rejected = status.pushes_rejected
    s.pushes_applied = status.pushes_received - status.pushes_rejected
    s.pushes_refused = status.pushes_refused
    s.messages_rejected = status.messages_rejected
    s.auth_rejected = status.auth_rejected
    s.staleness_max = status.staleness_max


def _add_server_figures(s: RunSummary, server: ServerSummary) -> None:
    s.num_params = server.num_params
    s.stop_reason = server.stop_reason
    s.updates = server.updates
    s.wall_s = server.wall_s
    s.updates_per_s = server.updates / server.wall_s if server.wall_s else 0.0
    s.pushes_received = server.pushes_received
    s.pushes_applied = server.pushes_applied
    s.pushes_rejected = server.pushes_rejected
    s.pushes_refused = sum(n for reason, n in server.rejected_by_reason.items() if reason != AFTER_THE_STOP)
    s.messages_rejected = server.messages_rejected
    s.auth, s.insecure, s.auth_rejected = server.auth, server.insecure, server.auth_rejected
    s.messages_throttled = server.messages_throttled
    s.rejected_by_reason = server.rejected_by_reason
    s.uplink_bytes = server.uplink_bytes
    s.downlink_bytes = server.downlink_bytes
    s.method = server.method
    s.compression_ratio = server.compression_ratio
    s.uplink_bits_per_worker = server.uplink_bits_per_worker
    s.ef_drift_max = server.ef_drift_max
    s.downlink = server.downlink
    s.downlink_gap_max = server.downlink_gap_max if server.downlink != "dense" else None
    s.staleness_mean = server.staleness_mean
    s.staleness_max = server.staleness_max
    s.staleness_p50 = server.staleness_p50
    s.staleness_p99 = server.staleness_p99
    s.pushes_dropped_stale = server.pushes_dropped_stale
    s.server_restarts, s.updates_lost = server.server_restarts, server.updates_lost
    s.shards, s.shard_spread = server.shards, server.shard_spread


def _add_evaluations(s: RunSummary, metrics: list[dict]) -> None:
    final = next((m for m in reversed(metrics) if m.get("final")), metrics[-1] if metrics else {})
    accs = [m["test_acc"] for m in metrics if m.get("test_acc") is not None]
    s.final_test_acc, s.final_test_loss = final.get("test_acc"), final.get("test_loss")
    s.final_train_loss, s.final_grad_norm_sq = final.get("train_loss"), final.get("grad_norm_sq")
    s.best_test_acc = max(accs) if accs else None
    s.time_to_acc_s = {str(t): time_to_accuracy(metrics, t) for t in ACC_TARGETS}
    s.evaluations = len(metrics)


def format_summary(s: RunSummary, run_dir: Path | str, plots: bool = True) -> str:
    """The launcher's final line (and where the results are)."""
    acc = s.final_test_acc
    acc_txt = f"test_acc {acc:.4f}" if acc is not None else f"test_loss {s.final_test_loss}"
    if acc is None and s.final_test_loss is None:
        acc_txt = "not evaluated"
    where = f"results: {run_dir}/summary.json" + (f", plots in {run_dir}/plots/" if plots else "")
    downlink = f"downlink {s.downlink_bytes / 2**20:.1f} MiB (topk), " if s.downlink == "topk" else ""
    # pushes that merely arrived after the stop are normal: counted apart from the refused ones
    late = s.pushes_rejected - s.pushes_refused
    after = f" ({late} more came after the stop)" if late > 0 else ""
    return (
        f"done: {count(s.updates, 'update')} in {s.wall_s:.1f}s ({s.updates_per_s:.1f}/s), {acc_txt}, "
        f"staleness mean {s.staleness_mean:.2f} max {s.staleness_max}, uplink {s.uplink_bytes / 2**20:.1f} MiB, "
        # a compressed downlink's bytes are what its user watches (dense replies may come by shared memory)
        f"{downlink}{count(s.pushes_refused, 'push', 'pushes')} not applied{after}\n{where}"
    )


def summarize(run_dir: Path) -> tuple[str, Outcome]:
    """summary.json (and plots, under run.plots) of a hand-started run whose server has ended; its final line
    and outcome (failed when a shard left no summary). Raises ConfigError for a bad config.yaml or a launcher's
    run folder, FileNotFoundError naming a missing file, ValueError naming a corrupt one, WriteError naming a
    file that could not be written."""
    cfg = load_experiment(run_dir / "config.yaml")
    if (run_dir / "processes.csv").exists():  # the launcher's: its summary.json has the processes and status
        raise ConfigError("<run folder>", f"{run_dir} was run by python -m launch (processes.csv), which wrote its "
                          "summary.json; launch.summary is for runs started by hand")  # fmt: skip
    silent = _assemble_shards(run_dir, cfg.server.shards)
    server = run_dir / "server_summary.json"
    if not server.exists():
        raise FileNotFoundError(f"{server} is missing: the server has not ended yet")
    if read_record(ServerSummary, server) is None:
        raise ValueError(f"{server} cannot be read (truncated or not a server summary)")
    outcome = _outcome(run_dir, silent)
    if cfg.run.plots:
        from launch.plots import plot_run  # matplotlib only now

        plot_run(run_dir)
    summary = build_summary(run_dir, cfg, {}, outcome)
    write_record_file(run_dir / "summary.json", summary)
    return format_summary(summary, run_dir, cfg.run.plots), outcome


def _assemble_shards(run_dir: Path, shards: int) -> list[Path]:
    """With server.shards > 1, the run folder's top assembled from the shards' folders as the launcher does
    (every call: a shard still running at an earlier one may have ended since); the summaries of the shards
    that wrote none (still running, or killed)."""
    if shards == 1:
        return []
    from launch.shards import ShardFiles, shard_dir  # torch only now

    ShardFiles(run_dir, shards).finish()
    summaries = [shard_dir(run_dir, s) / "server_summary.json" for s in range(shards)]
    return [path for path in summaries if not path.exists()]


def _outcome(run_dir: Path, silent: list[Path]) -> Outcome:
    """failed when a shard wrote no server_summary.json (`silent`); a warning when the evaluator has not scored
    the final snapshot (yet), whose accuracy would otherwise pass for the final one."""
    metrics = read_metrics(run_dir)
    if metrics and not any(m.get("final") for m in metrics):
        print(f"warning: the evaluator has not scored the final snapshot (yet): test_acc is that of update "
              f"{metrics[-1].get('updates')}", file=sys.stderr)  # fmt: skip
    if silent:
        names = ", ".join(str(path.relative_to(run_dir)) for path in silent)
        return Outcome.failed(f"no {names}: that shard is still running or was killed")
    return Outcome()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launch.summary", description=__doc__.split("\n\n")[1])
    ap.add_argument("run_dir", type=Path, help="the run folder (python -m launch.prepare --run-dir)")
    args = ap.parse_args(argv)
    try:
        line, outcome = summarize(args.run_dir)
    except (ConfigError, WriteError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(line)
    if not outcome.ok:
        print(f"error: run failed: {outcome.failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
