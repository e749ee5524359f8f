"""Restarting a process that died (run.max_restarts), with torchrun's semantics: each process may be
restarted up to max_restarts times, after a backoff of 1, 2, 4, ... seconds (at most 30), and every restart
is logged and counted in summary.json. The server comes back from its last checkpoint at the same endpoint,
and the workers find it there and join again; a worker comes back and joins again; the evaluator comes back
and goes on scoring. The synchronous baseline restarts nothing (a torch.distributed group does not take a
rank back), so a death there ends the run as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BACKOFF_MAX_S = 30.0


@dataclass
class Restarts:
    max_restarts: int
    counts: dict[str, int] = field(default_factory=dict)  # process name -> restarts so far
    due: dict[str, float] = field(default_factory=dict)  # process name -> when (monotonic) it restarts

    def take(self, name: str, now: float) -> float | None:
        """Schedule a restart of `name`; its delay in seconds, or None when its restarts are used up."""
        n = self.counts.get(name, 0)
        if n >= self.max_restarts:
            return None
        delay = min(BACKOFF_MAX_S, 2.0**n)
        self.counts[name] = n + 1
        self.due[name] = now + delay
        return delay

    def ready(self, now: float) -> list[str]:
        """The processes whose restart is due now (each returned once)."""
        names = [name for name, at in self.due.items() if at <= now]
        for name in names:
            del self.due[name]
        return names

    def waiting(self, name: str) -> bool:
        return name in self.due
