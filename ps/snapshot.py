"""Writes parameter snapshots for the evaluator from a background thread.

The server loop only copies the parameters (about 1 ms per 4M floats) into a reusable buffer; the
file write happens off the loop. If the previous write is still running the snapshot is skipped,
so a slow disk can never stall training.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from protocol.snapshot import write_snapshot


class Snapshotter:
    def __init__(self, folder: Path, numel: int):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._buf = torch.empty(numel, dtype=torch.float32)
        self._thread: threading.Thread | None = None
        self.written = 0
        self.skipped = 0

    def offer(self, params: torch.Tensor, meta: dict) -> bool:
        if self._thread is not None and self._thread.is_alive():
            self.skipped += 1
            return False
        self._buf.copy_(params)
        self._thread = threading.Thread(
            target=write_snapshot, args=(self.folder / "latest.snap", self._buf, meta), daemon=True
        )
        self._thread.start()
        self.written += 1
        return True

    def final(self, params: torch.Tensor, meta: dict) -> None:
        self.wait()
        write_snapshot(self.folder / "final.snap", params, {**meta, "final": True})

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=60)
