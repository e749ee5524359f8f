"""Fabricated run folders (the files a finished run leaves), for report and sweep tests without processes."""

from __future__ import annotations

import json
from pathlib import Path

UPDATE_COLUMNS = "version,worker,base_version,staleness,lr,bytes,applied,loss,seq,reason,wall_s"


def fake_run(
    run_dir: Path,
    updates: int = 20,
    push_bytes: int = 1000,
    acc_end: float | None = 0.9,
    staleness: int = 1,
    evals: int = 5,
    summary: dict | None = None,
    grad_norm: bool = False,
) -> Path:
    """A run of `updates` applied pushes of `push_bytes` each, then one rejected (stopped) push.

    Evaluations every updates/(evals-1) updates; accuracy rises linearly to acc_end (None: a
    regression run with no accuracy); grad_norm adds a falling grad_norm_sq. summary.json gets the given
    figures on top of consistent ones.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [UPDATE_COLUMNS]
    for v in range(1, updates + 1):
        tau = min(staleness, v - 1)
        rows.append(f"{v},{v % 2},{v - 1 - tau},{tau},0.001,{push_bytes},1,0.5,{v // 2},ok,{v * 0.01:.4f}")
    rows.append(f"{updates},0,{updates},0,0.001,{push_bytes},0,0.5,{updates},stopped,{updates * 0.01 + 0.01:.4f}")
    (run_dir / "updates.csv").write_text("\n".join(rows) + "\n")
    metrics = []
    for i in range(evals):
        u = updates * i // (evals - 1)
        acc = None if acc_end is None else 0.1 + (acc_end - 0.1) * i / (evals - 1)
        metrics.append(
            {
                "wall_s": u * 0.01,
                "updates": u,
                "train_loss": 2.0 / (1 + i),
                "test_loss": 2.1 / (1 + i),
                "test_acc": acc,
                "final": i == evals - 1,
            }
        )
        if grad_norm:
            metrics[-1]["grad_norm_sq"] = 10.0**-i
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    base = {
        "updates": updates,
        "wall_s": updates * 0.01,
        "updates_per_s": 100.0,
        "final_test_acc": acc_end,
        "final_test_loss": metrics[-1]["test_loss"],
        "uplink_bytes": (updates + 1) * push_bytes,
        "staleness_mean": float(staleness),
        "time_to_acc_s": {"0.9": None, "0.95": None, "0.97": None},
    }
    (run_dir / "summary.json").write_text(json.dumps({**base, **(summary or {})}))
    return run_dir
