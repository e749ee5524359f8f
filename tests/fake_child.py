"""Stand-ins for a run's children, quick to start (no torch), for tests of the launcher's stop paths.

python -m tests.fake_child server RUN_DIR WRITE_AFTER_S [END_AFTER_S]   serves until SIGTERM (or, given
    END_AFTER_S, until then: a normal end); then, like ps/, takes WRITE_AFTER_S to write final.safetensors and
    server_summary.json, and exits 3 when it was stopped by the signal, 0 at its normal end
python -m tests.fake_child worker EXIT_AFTER_S CODE        exits CODE after EXIT_AFTER_S (143 on SIGTERM)
python -m tests.fake_child evaluator RUN_DIR               waits for final.safetensors, appends a final metrics line
    and exits 0; no SIGTERM handler, as a process that would just die
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from protocol.runfolder.records import ServerSummary, Status, write_record

UPDATES = 42  # what the fake server reports, so a test can tell its summary reached summary.json


def server(run_dir: Path, write_after_s: float, end_after_s: float | None = None) -> int:
    stop: list[str] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append("terminated"))
    write_record(run_dir / "status.json", Status(updates=UPDATES, started=True, wall_s=1.0))
    end = time.monotonic() + (end_after_s if end_after_s is not None else float("inf"))
    while not stop and time.monotonic() < end:
        time.sleep(0.02)
    reason = stop[0] if stop else "max_updates"
    time.sleep(write_after_s)  # a server telling its workers Stop within server.stop_grace_s
    (run_dir / "snapshots").mkdir(exist_ok=True)
    (run_dir / "snapshots" / "final.safetensors").write_bytes(b"fake")
    summary = ServerSummary(updates=UPDATES, stop_reason=reason, wall_s=2.0, pushes_received=UPDATES + 5)
    summary.pushes_applied, summary.pushes_rejected = UPDATES, 5
    summary.rejected_by_reason = {"stopped": 4, "bad_numel": 1}
    write_record(run_dir / "server_summary.json", summary)
    return 3 if stop else 0  # as ps/ exits


def worker(exit_after_s: float, code: int) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print("ready", flush=True)  # the handler is in place (a test may signal from now on)
    time.sleep(exit_after_s)
    return code


def evaluator(run_dir: Path) -> int:
    final = run_dir / "snapshots" / "final.safetensors"
    while not final.exists():
        time.sleep(0.02)
    line = {"wall_s": 2.0, "updates": UPDATES, "train_loss": 1.0, "test_loss": 1.0, "test_acc": 0.5}
    line.update(train_loss_pushed=1.0, eval_s=0.001, final=True)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    role, args = sys.argv[1], sys.argv[2:]
    if role == "server":
        sys.exit(server(Path(args[0]), float(args[1]), float(args[2]) if len(args) > 2 else None))
    if role == "worker":
        sys.exit(worker(float(args[0]), int(args[1])))
    sys.exit(evaluator(Path(args[0])))
