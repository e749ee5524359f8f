"""summary.json: the final figures of a run, from the server's summary, the evaluations and psutil."""

from __future__ import annotations

from pathlib import Path

from launch.rundir import read_metrics
from protocol.config.schema import ExperimentConfig
from protocol.runfolder.records import RunSummary, ServerSummary, read_record

ACC_TARGETS = (0.9, 0.95, 0.97)


def time_to_accuracy(metrics: list[dict], target: float) -> float | None:
    for m in metrics:
        acc = m.get("test_acc")
        if acc is not None and acc >= target:
            return m["wall_s"]
    return None


def build_summary(run_dir: Path, cfg: ExperimentConfig, processes: dict) -> RunSummary:
    server = read_record(ServerSummary, run_dir / "server_summary.json") or ServerSummary()
    metrics = read_metrics(run_dir)
    final = next((m for m in reversed(metrics) if m.get("final")), metrics[-1] if metrics else {})
    accs = [m["test_acc"] for m in metrics if m.get("test_acc") is not None]
    return RunSummary(
        name=cfg.name,
        mode=cfg.mode,
        workers=cfg.workers,
        optimizer=cfg.optimizer.name,
        num_params=server.num_params,
        stop_reason=server.stop_reason,
        updates=server.updates,
        pushes_received=server.pushes_received,
        pushes_applied=server.pushes_applied,
        pushes_rejected=server.pushes_rejected,
        messages_rejected=server.messages_rejected,
        rejected_by_reason=server.rejected_by_reason,
        uplink_bytes=server.uplink_bytes,
        downlink_bytes=server.downlink_bytes,
        method=server.method,
        compression_ratio=server.compression_ratio,
        uplink_bits_per_worker=server.uplink_bits_per_worker,
        ef_drift_max=server.ef_drift_max,
        wall_s=server.wall_s,
        updates_per_s=server.updates / server.wall_s if server.wall_s else 0.0,
        final_test_acc=final.get("test_acc"),
        final_test_loss=final.get("test_loss"),
        final_train_loss=final.get("train_loss"),
        final_grad_norm_sq=final.get("grad_norm_sq"),
        best_test_acc=max(accs) if accs else None,
        time_to_acc_s={str(t): time_to_accuracy(metrics, t) for t in ACC_TARGETS},
        staleness_mean=server.staleness_mean,
        staleness_max=server.staleness_max,
        staleness_p50=server.staleness_p50,
        staleness_p99=server.staleness_p99,
        pushes_dropped_stale=server.pushes_dropped_stale,
        evaluations=len(metrics),
        processes=processes,
    )
