"""Server checkpoints: RUN/checkpoints/ckpt-<version>.safetensors (tensors) + ckpt-<version>.json (manifest).

Writing never holds the loop for more than a copy: the state's tensors are copied into buffers reused from
checkpoint to checkpoint, and a background thread writes them (temporary file, fsync, rename), then
computes the file's SHA-256 and writes the manifest the same way, last: a checkpoint without a manifest,
or whose file does not match the manifest's checksum, does not exist. The last `checkpoint.keep` are kept.
If the previous write is still running, a checkpoint is skipped (counted), never waited for.

Reading takes the newest checkpoint whose file matches its manifest; a truncated or corrupt one is
skipped with a warning naming the file. A checkpoint written for another model or config is refused
(CheckpointMismatch names the key), never silently mixed in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ps.state import ServerState

log = logging.getLogger("ps")


class CheckpointMismatch(ValueError):
    """A checkpoint of another model or config: `key` names what differs."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass
class CheckpointStats:
    written: int = 0
    skipped: int = 0  # offered while the previous one was still being written
    stall_ms_max: float = 0.0  # the longest the loop spent copying
    write_s_last: float = 0.0
    bytes_last: int = 0
    error: str | None = None  # the last failed write (a full disk), if any


class Checkpointer:
    def __init__(self, folder: Path, keep: int, identity: dict[str, Any]):
        self.folder = folder
        self.keep = keep
        self.identity = identity  # the model and config facts a checkpoint must match to be resumed
        self.stats = CheckpointStats()
        self._copies: dict[str, torch.Tensor] = {}
        self._thread: threading.Thread | None = None

    def offer(self, state: ServerState) -> bool:
        """Copy the state and write it in the background; False (skipped) while the last write is running."""
        if self._thread is not None and self._thread.is_alive():
            self.stats.skipped += 1
            return False
        t0 = time.perf_counter()
        copied = ServerState(
            state.version, state.wall_s, self._copy(state.tensors), json.loads(json.dumps(state.facts))
        )
        self.stats.stall_ms_max = max(self.stats.stall_ms_max, 1000 * (time.perf_counter() - t0))
        self._thread = threading.Thread(target=self._write_logged, args=(copied,), daemon=True)
        self._thread.start()
        return True

    def final(self, state: ServerState) -> None:
        """The last checkpoint of a run: waits for any write in flight, then writes this one."""
        self.wait()
        self._write_logged(ServerState(state.version, state.wall_s, self._copy(state.tensors), state.facts))

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=600)

    def _copy(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for name, t in tensors.items():
            buf = self._copies.get(name)
            if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
                self._copies[name] = buf = torch.empty_like(t, device="cpu")
            out[name] = buf.copy_(t)
        return out

    def _write_logged(self, state: ServerState) -> None:
        try:
            self._write(state)
        except OSError as err:  # a full disk: training goes on, the summary says so
            self.stats.error = f"{type(err).__name__}: {err}"
            log.warning("checkpoint at version %d not written: %s", state.version, self.stats.error)

    def _write(self, state: ServerState) -> None:
        t0 = time.perf_counter()
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = f"ckpt-{state.version:010d}"
        data = self.folder / f"{stem}.safetensors"
        _atomic(data, lambda tmp: save_file(state.tensors, str(tmp)))
        size = data.stat().st_size
        manifest = {
            "version": state.version,
            "wall_s": state.wall_s,
            "file": data.name,
            "sha256": sha256(data),
            "bytes": size,
            "written_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "identity": self.identity,
            "facts": state.facts,
        }
        _atomic(self.folder / f"{stem}.json", lambda tmp: tmp.write_text(json.dumps(manifest)))
        self.stats.written += 1
        self.stats.write_s_last, self.stats.bytes_last = time.perf_counter() - t0, size
        self._prune()

    def _prune(self) -> None:
        for old in manifests(self.folder)[self.keep :]:
            for path in (old, old.with_suffix(".safetensors")):
                path.unlink(missing_ok=True)


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def manifests(folder: Path) -> list[Path]:
    """Manifests, newest version first."""
    return sorted(folder.glob("ckpt-*.json"), reverse=True)


def load_latest(folder: Path, identity: dict[str, Any]) -> tuple[ServerState, Path] | None:
    """The newest whole checkpoint in `folder` (None: none). Raises CheckpointMismatch for another model or
    config; skips, with a warning naming the file, one that is truncated or corrupt."""
    for path in manifests(folder):
        try:
            manifest = json.loads(path.read_text())
            data = folder / manifest["file"]
            if sha256(data) != manifest["sha256"]:
                raise ValueError(f"{data.name} does not match its checksum (truncated or corrupt)")
            tensors = load_file(str(data))
        except (OSError, ValueError, KeyError, SafetensorError) as err:
            log.warning("skipping checkpoint %s: %s", path, err)
            continue
        check_identity(manifest.get("identity", {}), identity, path)
        return ServerState(int(manifest["version"]), float(manifest["wall_s"]), tensors, manifest["facts"]), path
    return None


def check_identity(theirs: dict[str, Any], ours: dict[str, Any], path: Path) -> None:
    for key, value in ours.items():
        if theirs.get(key) != value:
            raise CheckpointMismatch(
                key, f"{path} was written for {theirs.get(key)!r}, this run has {value!r}: not resumed from it"
            )
