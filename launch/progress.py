"""The launcher's live progress line: updates, updates/s, loss, staleness, latest test accuracy."""

from __future__ import annotations

import sys
import time

from protocol.runfolder.records import Status


class Progress:
    def __init__(self, max_updates: int, every_s: float, stream=None, starting: str = "starting the server..."):
        self.max_updates = max_updates
        self.starting = starting  # shown until the first status.json
        self.every_s = every_s
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self._next = 0.0
        self._drawn = False
        self._last = ""

    def show(self, status: Status | None, metric: dict | None, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next:
            return
        self._next = now + self.every_s
        line = format_line(status, metric, self.max_updates, self.starting)
        if line == self._last:
            return
        self._last = line
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self._drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        """End the line in place (a terminal); may be called again (after a failure, then at the end)."""
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def format_line(
    status: Status | None, metric: dict | None, max_updates: int, starting: str = "starting the server..."
) -> str:
    if status is None:
        return starting
    if not status.started:
        return f"waiting for workers to join: {status.workers_joined}/{status.workers}"
    parts = [
        f"[{status.wall_s:7.1f}s]",
        f"updates {status.updates}/{max_updates}",
        f"({status.updates_per_s or 0:.1f}/s)",
    ]
    if status.loss is not None:
        parts.append(f"loss {status.loss:.4f}")
    if status.staleness_mean is not None:
        parts.append(f"staleness mean {status.staleness_mean:.1f} max {status.staleness_max}")
    if status.pushes_refused:
        parts.append(f"not applied {status.pushes_refused}")
    if metric and metric.get("test_acc") is not None:
        parts.append(f"test_acc {metric['test_acc']:.4f} @{metric['updates']}")
    elif metric:
        parts.append(f"test_loss {metric['test_loss']:.4g} @{metric['updates']}")
    return "  ".join(parts)
