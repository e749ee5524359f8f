"""How a run ended, as the launcher records it in summary.json (status, failure) and reports it (exit code).

ok           training ended normally and the final snapshot was scored
failed       a child died or failed, or the run overran its limits (exit 1)
interrupted  the launcher got SIGINT (exit 130)
terminated   the launcher got SIGTERM or SIGHUP (exit 143, 129)
"""

from __future__ import annotations

from dataclasses import dataclass

from launch.signals import Stopped


class RunFailed(RuntimeError):
    pass


@dataclass
class Outcome:
    status: str = "ok"
    failure: str | None = None  # the message the launcher prints; summary.json keeps it
    stopped: Stopped | None = None  # the signal, when one ended the run

    @classmethod
    def failed(cls, message: str) -> Outcome:
        return cls("failed", message)

    @classmethod
    def by_signal(cls, stopped: Stopped) -> Outcome:
        return cls(stopped.status, stopped.describe(), stopped)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def raise_unless_ok(self) -> None:
        """Hand the end to the caller as before the run folder was finished: Stopped or RunFailed."""
        if self.stopped is not None:
            raise self.stopped
        if not self.ok:
            raise RunFailed(self.failure or self.status)
