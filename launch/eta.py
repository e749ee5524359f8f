"""How far a run is and when it will end: against run.max_updates and run.max_seconds, whichever comes first.

Each limit gets its own estimate of the time left: max_seconds from the elapsed wall time, max_updates from the
current rate. The run ends at the nearer one, so the progress line shows that one's time left and share done.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.runfolder.records import Status


@dataclass(frozen=True)
class Limits:
    max_updates: int  # the server stops at this version
    max_seconds: float  # ... or after this much wall time since training started


@dataclass(frozen=True)
class Estimate:
    fraction: float  # share of the nearer limit reached, in [0, 1]
    eta_s: float  # seconds left until the nearer limit
    limit: str  # which limit is nearer: "updates" or "seconds"


def estimate(status: Status, limits: Limits) -> Estimate:
    """The nearer limit's share done and time left; only the clock's until an update rate is known."""
    by_seconds = Estimate(
        fraction=min(1.0, status.wall_s / limits.max_seconds),
        eta_s=max(0.0, limits.max_seconds - status.wall_s),
        limit="seconds",
    )
    rate = version_rate(status)
    if rate <= 0:
        return by_seconds
    by_updates = Estimate(
        fraction=min(1.0, status.version / limits.max_updates),
        eta_s=max(0, limits.max_updates - status.version) / rate,
        limit="updates",
    )
    return by_updates if by_updates.eta_s <= by_seconds.eta_s else by_seconds


def version_rate(status: Status) -> float:
    """Versions per second, what max_updates counts. updates_per_s counts applied pushes (sync: steps); with
    staleness.apply_every k, k of them make one version, so it is scaled by the ratio seen so far."""
    if status.updates <= 0:
        return 0.0
    return status.updates_per_s * status.version / status.updates
