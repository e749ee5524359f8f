"""Parameter snapshots: how the server hands parameters to the evaluator without slowing the workers.

A snapshot is a safetensors file (no pickle) with two flat float32 tensors, `params` (the served
parameters, in the layout's order) and `buffers` (the model's buffers, averaged over the workers; empty
for a model without any), and the snapshot's facts as JSON in the metadata key "meta" (version, wall_s,
final, ...). Files are written to a temporary name, flushed to disk and renamed, so a reader sees a whole
snapshot or none. The server and the synchronous baseline's rank 0 write them (Snapshotter); the
evaluator reads them.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

LATEST = "latest.safetensors"
FINAL = "final.safetensors"


class Snapshot(NamedTuple):
    meta: dict
    params: torch.Tensor  # float32 (numel,)
    buffers: torch.Tensor  # float32 (buffer numel,), possibly empty


def write_snapshot(path: Path, params: torch.Tensor, meta: dict, buffers: torch.Tensor | None = None) -> None:
    """Write atomically (temporary file, fsync, rename). Raises OSError when the disk refuses."""
    tensors = {
        "params": params.detach().reshape(-1).to("cpu", torch.float32).contiguous(),
        "buffers": (buffers if buffers is not None else torch.empty(0)).detach().reshape(-1).float().cpu(),
    }
    # a name of this writer's own: two writers of one path (the snapshot thread and the end) would otherwise
    # share one temporary file, one truncating it while the other renames it into place half-written
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    save_file(tensors, str(tmp), metadata={"meta": json.dumps({**meta, "numel": params.numel()})})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_snapshot(path: Path) -> Snapshot:
    """Raises ValueError naming the file when it is not a whole taups snapshot."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["meta"])
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except (SafetensorError, KeyError, ValueError, OSError, RuntimeError) as err:  # RuntimeError: a short file
        raise ValueError(f"{path} is not a taups snapshot ({type(err).__name__}: {err})") from None
    if "params" not in tensors or tensors["params"].numel() != meta.get("numel"):
        raise ValueError(f"{path} is not a whole taups snapshot")
    return Snapshot(meta, tensors["params"], tensors.get("buffers", torch.empty(0)))


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

    def offer(self, params: torch.Tensor, meta: dict, buffers: torch.Tensor | None = None) -> bool:
        if self._thread is not None and self._thread.is_alive():
            self.skipped += 1
            return False
        if self._buf.numel() != params.numel():
            self._buf = torch.empty(params.numel(), dtype=torch.float32)
        self._buf.copy_(params)
        copied = None if buffers is None else buffers.clone()  # small: BatchNorm statistics
        self._thread = threading.Thread(target=self._write, args=(self._buf, meta, copied), daemon=True)
        self._thread.start()
        self.written += 1
        return True

    def _write(self, buf: torch.Tensor, meta: dict, buffers: torch.Tensor | None) -> None:
        try:
            write_snapshot(self.folder / LATEST, buf, meta, buffers)
        except OSError as err:  # the evaluator misses one snapshot; training goes on
            self.error = f"{type(err).__name__}: {err}"

    def final(self, params: torch.Tensor, meta: dict, buffers: torch.Tensor | None = None) -> None:
        self.wait()
        write_snapshot(self.folder / FINAL, params, {**meta, "final": True}, buffers)

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=60)
