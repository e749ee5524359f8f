"""The launcher's live progress: percent done and ETA (launch/eta.py), updates, updates/s, loss, staleness, latest
test accuracy.

On a terminal it is a tqdm bar redrawn in place. Anywhere else (a log file, CI) it is one plain line per change:
tqdm writes to a non-terminal the same way, joining every redraw with carriage returns into one endless line,
so there the text is written as lines instead.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

from tqdm import tqdm

from launch.eta import Estimate, Limits, estimate, version_rate
from protocol.runfolder.records import Status

BAR = "{percentage:3.0f}%|{bar:10}| {desc}"  # narrow: on 80 columns the text after it matters more
TEXT = "{desc}"  # before training starts: the starting and waiting messages alone
STEPS = 1000  # the bar's resolution: tenths of a percent


class Progress:
    def __init__(
        self, limits: Limits, every_s: float, stream: TextIO | None = None, starting: str = "starting the server..."
    ):
        self.limits = limits
        self.starting = starting  # shown until the first status.json
        self.every_s = every_s
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self._bar: tqdm | None = None
        self._next = 0.0
        self._last = ""

    def show(self, status: Status | None, metric: dict | None, force: bool = False) -> None:
        """force: the launcher's last call, after the final evaluation. Until then a log (not a terminal, where
        the line is redrawn) gets no stopping line: it would come twice, the second with the final test_acc."""
        now = time.monotonic()
        if not force and (now < self._next or (not self.tty and status is not None and status.stopping)):
            return
        self._next = now + self.every_s
        line = format_line(status, metric, self.limits, self.starting, percent=not self.tty)
        if line == self._last:
            return
        self._last = line
        if self.tty:
            self._draw(line, status)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def _draw(self, text: str, status: Status | None) -> None:
        if self._bar is None:
            self._bar = tqdm(total=STEPS, file=self.stream, bar_format=TEXT, mininterval=0)
        # the size now (a resized window), from shutil: for a pty nobody sized, tqdm reads -1 x -1 and then
        # draws nothing at all, where shutil falls back to 80 x 24
        self._bar.ncols, self._bar.nrows = shutil.get_terminal_size()
        if status is not None and status.started:
            self._bar.bar_format = BAR
            self._bar.n = round(STEPS * estimate(status, self.limits).fraction)
        else:
            self._bar.bar_format = TEXT
            self._bar.n = 0
        self._bar.set_description_str(text, refresh=False)
        self._bar.refresh()

    def done(self) -> None:
        """Leave the bar's last state on its line (a terminal); may be called again (after a failure, then at
        the end)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._last = ""  # a later show() starts a new bar


def format_line(
    status: Status | None,
    metric: dict | None,
    limits: Limits,
    starting: str = "starting the server...",
    percent: bool = True,
) -> str:
    """The progress line; percent=False leaves out the percent (the bar shows it)."""
    if status is None:
        return starting
    if not status.started:
        return f"waiting for workers to join: {status.workers_joined}/{status.workers}"
    est = estimate(status, limits)
    parts = [f"[{status.wall_s:7.1f}s]"]
    if percent:
        parts.append(f"{100 * est.fraction:3.0f}%")
    parts += [_when(status, est), f"updates {status.version}/{limits.max_updates}", f"({version_rate(status):.1f}/s)"]
    return "  ".join(parts + _figures(status, metric))


def _when(status: Status, est: Estimate) -> str:
    """The time left, or why the run is ending once the server stops."""
    if status.stopping:
        return f"stopping ({status.stopping})"
    return f"ETA {tqdm.format_interval(est.eta_s)}" + (" (max_seconds)" if est.limit == "seconds" else "")


def _figures(status: Status, metric: dict | None) -> list[str]:
    parts = []
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
    return parts
