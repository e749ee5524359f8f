"""Reading a JSON-lines file (metrics.jsonl) as it grows: each read returns only the whole lines added since the
last, so the watch loop does not re-read a long run's file every tick, and a line still being written is left
for the next read instead of being lost."""

from __future__ import annotations

import json
from pathlib import Path


class JsonLinesTail:
    def __init__(self, path: Path):
        self.path = path
        self.last: dict | None = None  # the latest line read (the progress line shows it)
        self._offset = 0  # bytes of whole lines consumed

    def read_new(self) -> list[dict]:
        """The objects on the whole lines written since the last call (none while the file does not exist)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return []
        whole = chunk[: chunk.rfind(b"\n") + 1]  # the evaluator ends every line it appends with a newline
        self._offset += len(whole)
        lines = [obj for obj in map(_parse, whole.splitlines()) if obj is not None]
        if lines:
            self.last = lines[-1]
        return lines


def _parse(raw: bytes) -> dict | None:
    """A line's object; None for a blank or broken line (a torn write left by a process that was killed)."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None
