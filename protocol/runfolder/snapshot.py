"""Parameter snapshot files: how the server hands parameters to the evaluator without slowing workers.

Format: b"TAUPSNAP" | uint32 little-endian JSON length | JSON meta | raw float32 little-endian values.
Files are written to a temporary name and renamed, so a reader always sees a whole snapshot.
The parameter server and the synchronous baseline's rank 0 both write them (Snapshotter), the
evaluator reads them.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from pathlib import Path

import torch

MAGIC = b"TAUPSNAP"


def write_snapshot(path: Path, params: torch.Tensor, meta: dict) -> None:
    meta = {**meta, "numel": params.numel()}
    blob = json.dumps(meta).encode()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<I", len(blob)) + blob)
        f.write(memoryview(params.detach().cpu().contiguous().numpy()))
    os.replace(tmp, path)


def read_snapshot(path: Path) -> tuple[dict, torch.Tensor]:
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + 4)
        if len(head) != len(MAGIC) + 4 or head[: len(MAGIC)] != MAGIC:
            raise ValueError(f"{path} is not a taups snapshot")
        (n,) = struct.unpack("<I", head[len(MAGIC) :])
        meta = json.loads(f.read(n))
        params = torch.empty(int(meta["numel"]), dtype=torch.float32)
        got = f.readinto(memoryview(params.numpy()).cast("B"))
        if got != params.numel() * 4:
            raise ValueError(f"{path} is truncated ({got} of {params.numel() * 4} bytes)")
    return meta, params


class Snapshotter:
    """Writes parameter snapshots for the evaluator from a background thread.

    The training loop (the server's, or sync rank 0's) only copies the parameters (about 1 ms per
    4M floats) into a reusable host buffer; the file write happens off the loop. If the previous
    write is still running the snapshot is skipped, so a slow disk can never stall training.
    """

    def __init__(self, folder: Path, numel: int = 0):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._buf = torch.empty(numel, dtype=torch.float32)
        self._thread: threading.Thread | None = None
        self.written = 0
        self.skipped = 0
        self.error: str | None = None  # the last failed background write (a full disk), if any

    def offer(self, params: torch.Tensor, meta: dict) -> bool:
        if self._thread is not None and self._thread.is_alive():
            self.skipped += 1
            return False
        if self._buf.numel() != params.numel():
            self._buf = torch.empty(params.numel(), dtype=torch.float32)
        self._buf.copy_(params)
        self._thread = threading.Thread(target=self._write, args=(self._buf, meta), daemon=True)
        self._thread.start()
        self.written += 1
        return True

    def _write(self, buf: torch.Tensor, meta: dict) -> None:
        try:
            write_snapshot(self.folder / "latest.snap", buf, meta)
        except OSError as err:  # the evaluator misses one snapshot; training goes on
            self.error = f"{type(err).__name__}: {err}"

    def final(self, params: torch.Tensor, meta: dict) -> None:
        self.wait()
        write_snapshot(self.folder / "final.snap", params, {**meta, "final": True})

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=60)
