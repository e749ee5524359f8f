"""updates.csv: one row per push the server received. Rows are buffered and flushed on the status cadence,
so recording costs a string format per push.

A log that cannot be written (a full disk, a removed folder) never stops training: the writer stops
writing, remembers why, and counts the rows it could not write; the summary reports both.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from protocol.runfolder.records import PushRecord

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


class UpdateLog:
    """updates.csv writer (or a no-op without a run folder)."""

    def __init__(self, path: Path | None, append: bool = False):
        self.error: str | None = None  # why writing stopped, if it did
        self.rows_lost = 0
        self._path = path
        self._f: TextIO | None = None
        if path is not None:
            self._guard(lambda: self._open(path, append))

    def _open(self, path: Path, append: bool) -> None:
        fresh = not (append and path.exists())
        self._f = open(path, "a" if append else "w", buffering=1 << 20)
        if fresh:
            self._f.write(",".join(UPDATE_COLUMNS) + "\n")

    def truncate(self, size: int) -> None:
        """Cut the log back to `size` bytes (rows past a checkpoint a resume goes back to) and append from there."""
        if self._f is None or self._path is None or size < 0:
            return
        f, self._f = self._f, None
        f.close()
        path = self._path

        def reopen() -> None:
            os.truncate(path, size)
            self._open(path, append=True)

        self._guard(reopen)

    def write(self, r: PushRecord) -> None:
        if self._f is None:
            self.rows_lost += self.error is not None
            return
        loss = "" if r.loss != r.loss else f"{r.loss:.6g}"
        line = (
            f"{r.version},{r.worker},{r.base_version},{r.staleness},{r.lr:.6g},{r.bytes},"
            f"{int(r.applied)},{loss},{r.seq},{r.reason},{r.wall_s:.4f}\n"
        )
        f = self._f
        self._guard(lambda: f.write(line))

    def flush(self) -> None:
        f = self._f
        if f is not None:
            self._guard(f.flush)

    def position(self) -> int:
        """Bytes written so far, flushed (a checkpoint records it: a resume truncates the log back to it)."""
        f = self._f
        if f is None:
            return -1
        self._guard(f.flush)
        return f.tell() if self._f is not None else -1

    def close(self) -> None:
        f, self._f = self._f, None
        if f is not None:
            try:
                f.close()
            except OSError as err:
                self.error = self.error or f"{type(err).__name__}: {err}"

    def _guard(self, action: Callable[[], object]) -> None:
        try:
            action()
        except OSError as err:
            self.error = f"{type(err).__name__}: {err}"
            self.rows_lost += 1
            f, self._f = self._f, None
            if f is not None:
                with contextlib.suppress(OSError):  # the buffered rows are lost with it; error says why
                    f.close()
