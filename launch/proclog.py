"""processes.csv: psutil samples of every child, one row per child per tick.

A side record: when it cannot be written (a full disk) the run goes on without it, and the error is kept,
naming the file, for the launcher to report at the end; it never raises into the run.
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Callable
from pathlib import Path
from typing import IO

from launch.writes import WriteError

HEADER = ["wall_s", "process", "pid", "cpu_percent", "rss_mb"]


class ProcessLog:
    def __init__(self, path: Path, opener: Callable[..., IO[str]] = open):
        self.path = path
        self.error: str | None = None  # the first failed write, naming the file; no row is written after it
        self._file: IO[str] | None = None
        try:
            self._file = opener(path, "w", newline="")
            self._rows = csv.writer(self._file)
            self._rows.writerow(HEADER)
        except OSError as err:
            self._failed(err)

    def row(self, wall_s: float, name: str, pid: int, cpu_percent: float, rss_bytes: int) -> None:
        if self._file is None:
            return
        try:
            self._rows.writerow([f"{wall_s:.2f}", name, pid, f"{cpu_percent:.1f}", f"{rss_bytes / 2**20:.1f}"])
        except OSError as err:
            self._failed(err)

    def close(self) -> None:
        """Flush and close; a flush that fails (the buffered rows meet a full disk) is kept like any other."""
        if self._file is None:
            return
        try:
            self._file.close()
        except OSError as err:
            self._failed(err)

    def _failed(self, err: OSError) -> None:
        if self.error is None:
            self.error = str(WriteError(self.path, err))
        f, self._file = self._file, None
        if f is not None:
            with contextlib.suppress(OSError):  # the buffer that failed to flush fails again: keep the first error
                f.close()
