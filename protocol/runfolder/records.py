"""What a run records: one updates.csv row per push received, running counters, status.json.

Rows are buffered and flushed on the status cadence, so recording costs a string format per push.
It lives in `protocol` because both the parameter server and the synchronous baseline's rank 0
(sync/loop.py) write these files, and ps and worker may not import each other; it holds no ML.
"""

from __future__ import annotations

import json
import os
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

UPDATE_COLUMNS = (
    "version",
    "worker",
    "base_version",
    "staleness",
    "lr",
    "bytes",
    "applied",
    "loss",
    "seq",
    "reason",
    "wall_s",
)


@dataclass
class PushRecord:
    version: int  # server version after this push was handled
    worker: int
    base_version: int
    staleness: int
    lr: float  # the learning rate applied (0 when not applied)
    bytes: int  # bytes of the push message that crossed the socket (header + frames)
    applied: bool
    loss: float
    seq: int
    reason: str  # "ok" or why it was not applied
    wall_s: float


@dataclass
class Counters:
    pushes_received: int = 0
    pushes_applied: int = 0
    pushes_rejected: int = 0
    messages_rejected: int = 0  # undecodable messages (no push row can be written for them)
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    staleness_sum: int = 0
    staleness_max: int = 0
    reasons: Counter = field(default_factory=Counter)
    staleness_hist: Counter = field(default_factory=Counter)
    staleness_by_worker: dict = field(default_factory=dict)  # rank -> Counter of staleness
    recent: deque = field(default_factory=lambda: deque(maxlen=512))  # (wall_s, staleness, loss) applied

    def add(self, r: PushRecord) -> None:
        self.pushes_received += 1
        if r.applied:
            self.pushes_applied += 1
            self.staleness_sum += r.staleness
            self.staleness_max = max(self.staleness_max, r.staleness)
            self.staleness_hist[r.staleness] += 1
            self.staleness_by_worker.setdefault(r.worker, Counter())[r.staleness] += 1
            self.recent.append((r.wall_s, r.staleness, r.loss))
        else:
            self.pushes_rejected += 1
            self.reasons[r.reason] += 1

    def window(self) -> dict:
        """Rate, loss and staleness over the most recent applied pushes (for the progress line)."""
        if not self.recent:
            return {"updates_per_s": 0.0, "loss": None, "staleness_mean": None, "staleness_max_recent": None}
        times = [t for t, _, _ in self.recent]
        span = times[-1] - times[0]
        stal = [s for _, s, _ in self.recent]
        losses = [loss for _, _, loss in self.recent if loss == loss]
        return {
            "updates_per_s": (len(times) - 1) / span if span > 0 else 0.0,
            "loss": sum(losses) / len(losses) if losses else None,
            "staleness_mean": sum(stal) / len(stal),
            "staleness_max_recent": max(stal),
        }

    def summary(self) -> dict:
        applied = self.pushes_applied
        return {
            "pushes_received": self.pushes_received,
            "pushes_applied": applied,
            "pushes_rejected": self.pushes_rejected,
            "messages_rejected": self.messages_rejected,
            "rejected_by_reason": dict(self.reasons),
            "uplink_bytes": self.uplink_bytes,
            "downlink_bytes": self.downlink_bytes,
            "staleness_mean": self.staleness_sum / applied if applied else 0.0,
            "staleness_max": self.staleness_max,
            "staleness_p50": quantile(self.staleness_hist, 0.5),
            "staleness_p99": quantile(self.staleness_hist, 0.99),
            "pushes_dropped_stale": self.reasons.get("stale", 0),
            "staleness_hist": {str(k): v for k, v in sorted(self.staleness_hist.items())},
            "staleness_hist_by_worker": {
                str(w): {str(k): v for k, v in sorted(h.items())} for w, h in sorted(self.staleness_by_worker.items())
            },
        }


def quantile(hist: Counter, q: float) -> int | None:
    """The q-quantile of an integer histogram (smallest value with cumulative share >= q)."""
    total = sum(hist.values())
    if not total:
        return None
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= q * total:
            return value
    return max(hist)


class UpdateLog:
    """updates.csv writer (or a no-op without a run folder)."""

    def __init__(self, path: Path | None):
        self._f = open(path, "w", buffering=1 << 20) if path else None
        if self._f:
            self._f.write(",".join(UPDATE_COLUMNS) + "\n")

    def write(self, r: PushRecord) -> None:
        if self._f:
            loss = "" if r.loss != r.loss else f"{r.loss:.6g}"
            self._f.write(
                f"{r.version},{r.worker},{r.base_version},{r.staleness},{r.lr:.6g},{r.bytes},"
                f"{int(r.applied)},{loss},{r.seq},{r.reason},{r.wall_s:.4f}\n"
            )

    def flush(self) -> None:
        if self._f:
            self._f.flush()

    def close(self) -> None:
        if self._f:
            self._f.close()
            self._f = None


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)
