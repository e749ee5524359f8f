"""summary.json: the final figures of a run, from the server's summary, the evaluations and psutil.

A failed or stopped run gets one too (status, failure), with whatever the server and the evaluator left:
when there is no server_summary.json (a sync group that lost a rank cannot finish; a server killed after
its grace), the last status.json gives the counts it has (updates, pushes, wall time, staleness max).
"""

from __future__ import annotations

from pathlib import Path

from launch.outcome import Outcome
from launch.rundir import read_metrics
from protocol.config.schema import ExperimentConfig
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
