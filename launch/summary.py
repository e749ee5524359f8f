"""summary.json: the final figures of a run, from the server's counters, the evaluations and psutil."""

from __future__ import annotations

from pathlib import Path

from launch.rundir import read_json, read_metrics
from protocol.config.schema import ExperimentConfig

ACC_TARGETS = (0.9, 0.95, 0.97)


def time_to_accuracy(metrics: list[dict], target: float) -> float | None:
    for m in metrics:
        acc = m.get("test_acc")
        if acc is not None and acc >= target:
            return m["wall_s"]
    return None


def build_summary(run_dir: Path, cfg: ExperimentConfig, processes: dict) -> dict:
    server = read_json(run_dir / "server_summary.json") or {}
    metrics = read_metrics(run_dir)
    final = next((m for m in reversed(metrics) if m.get("final")), metrics[-1] if metrics else {})
    accs = [m["test_acc"] for m in metrics if m.get("test_acc") is not None]
    updates = server.get("updates", 0)
    wall = server.get("wall_s", 0.0)
    return {
        "name": cfg.name,
        "mode": cfg.mode,
        "workers": cfg.workers,
        "optimizer": cfg.optimizer.name,
        "num_params": server.get("num_params"),
        "stop_reason": server.get("stop_reason"),
        "updates": updates,
        "pushes_received": server.get("pushes_received", 0),
        "pushes_applied": server.get("pushes_applied", 0),
        "pushes_rejected": server.get("pushes_rejected", 0),
        "messages_rejected": server.get("messages_rejected", 0),
        "rejected_by_reason": server.get("rejected_by_reason", {}),
        "uplink_bytes": server.get("uplink_bytes", 0),
        "downlink_bytes": server.get("downlink_bytes", 0),
        "method": server.get("method"),
        "compression_ratio": server.get("compression_ratio"),
        "uplink_bits_per_worker": server.get("uplink_bits_per_worker"),
        "ef_drift_max": server.get("ef_drift_max"),
        "wall_s": wall,
        "updates_per_s": updates / wall if wall else 0.0,
        "final_test_acc": final.get("test_acc"),
        "final_test_loss": final.get("test_loss"),
        "final_train_loss": final.get("train_loss"),
        "final_grad_norm_sq": final.get("grad_norm_sq"),  # None unless run.eval_grad_norm (or the quadratic)
        "best_test_acc": max(accs) if accs else None,
        "time_to_acc_s": {str(t): time_to_accuracy(metrics, t) for t in ACC_TARGETS},
        "staleness_mean": server.get("staleness_mean", 0.0),
        "staleness_max": server.get("staleness_max", 0),
        "staleness_p50": server.get("staleness_p50"),
        "staleness_p99": server.get("staleness_p99"),
        "pushes_dropped_stale": server.get("pushes_dropped_stale", 0),
        "evaluations": len(metrics),
        "processes": processes,
    }
