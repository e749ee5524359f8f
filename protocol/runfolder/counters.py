"""Running counters behind status.json and server_summary.json: pushes, bytes, staleness. Pure bookkeeping."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from protocol.runfolder.records import PushRecord


@dataclass
class Counters:
    pushes_received: int = 0
    pushes_applied: int = 0
    pushes_rejected: int = 0
    messages_rejected: int = 0  # undecodable messages (no push row can be written for them)
    auth_rejected: int = 0  # connections whose CURVE handshake failed: no message of theirs was read
    messages_throttled: int = 0  # messages of a peer over its admission limits, dropped unread
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    values_clipped: int = 0  # values workers clipped to the wire dtype's range (meta.clipped of the pushes)
    pushes_clipped: int = 0
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

    def state(self) -> dict[str, Any]:
        """Everything, as JSON (a checkpoint restores the counters exactly)."""
        plain = {k: v for k, v in vars(self).items() if isinstance(v, int)}
        return {
            **plain,
            "reasons": dict(self.reasons),
            "staleness_hist": {str(k): v for k, v in self.staleness_hist.items()},
            "staleness_by_worker": {
                str(w): {str(k): v for k, v in h.items()} for w, h in self.staleness_by_worker.items()
            },
            "recent": [list(x) for x in self.recent],
        }

    def load_state(self, facts: dict[str, Any]) -> None:
        for k, v in facts.items():
            if isinstance(getattr(self, k, None), int) and isinstance(v, int):
                setattr(self, k, v)
        self.reasons = Counter(facts["reasons"])
        self.staleness_hist = Counter({int(k): v for k, v in facts["staleness_hist"].items()})
        self.staleness_by_worker = {
            int(w): Counter({int(k): v for k, v in h.items()}) for w, h in facts["staleness_by_worker"].items()
        }
        self.recent.clear()
        self.recent.extend(tuple(x) for x in facts["recent"])

    def note_clipped(self, clipped: object) -> None:
        """A push's meta.clipped, if it is a count (anything else is ignored: it is only reported)."""
        if type(clipped) is int and clipped > 0:
            self.values_clipped += clipped
            self.pushes_clipped += 1

    def window(self) -> dict[str, Any]:
        """Status fields over the most recent applied pushes: rate, loss, staleness (for the progress line)."""
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

    def summary_fields(self) -> dict[str, Any]:
        """The ServerSummary fields these counters fill."""
        applied = self.pushes_applied
        return {
            "pushes_received": self.pushes_received,
            "pushes_applied": applied,
            "pushes_rejected": self.pushes_rejected,
            "messages_rejected": self.messages_rejected,
            "auth_rejected": self.auth_rejected,
            "messages_throttled": self.messages_throttled,
            "rejected_by_reason": dict(self.reasons),
            "uplink_bytes": self.uplink_bytes,
            "downlink_bytes": self.downlink_bytes,
            "values_clipped": self.values_clipped,
            "pushes_clipped": self.pushes_clipped,
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
