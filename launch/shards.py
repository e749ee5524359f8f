"""The run folder of a run with server shards (server.shards > 1; docs/design.md, Shards), as one server's.

Shard s keeps its own files in RUN/shard-s/ (status.json, updates.csv, snapshots/, checkpoints/,
server_summary.json) and its endpoint in RUN/server-s.json. The launcher puts together what every reader of
the run folder expects at its top (launch/run.py calls these):
    snapshots/latest.safetensors  every tick, once every shard has a snapshot and one of them is newer: the
                                  shards' ranges side by side (each shard's latest; their versions are in the
                                  metadata as shard_versions), the model buffers from shard 0
    snapshots/final.safetensors   once every shard has written its final snapshot
    status.json                   every tick: shard 0's (shard 0's clock is the run's)
    updates.csv                   at the end: shard 0's (every push reaches every shard; each shard's own
                                  rows, with its clock and the staleness of its part, stay in shard-s/)
    server_summary.json           at the end: shard 0's counts, the bytes of all shards, `updates` the smallest
                                  shard version, `shards`
                                  (each shard's range size, updates, updates/s, staleness and time split) and
                                  `shard_spread` (max - min of their versions)
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from launch.rundir import read_json
from launch.writes import WriteError, write_record_file
from protocol.runfolder.model_init import FILE as MODEL_FILE
from protocol.runfolder.model_init import read_model_init
from protocol.runfolder.records import ServerSummary, read_record
from protocol.runfolder.snapshot import FINAL, LATEST, read_snapshot, write_snapshot
from protocol.wire.layout import shard_ranges


def shard_dir(run_dir: Path, shard: int) -> Path:
    return run_dir / f"shard-{shard}"


class ShardFiles:
    """Assembles the run folder's top from the shards' folders (one writer per file: the launcher)."""

    def __init__(self, run_dir: Path, shards: int):
        self.run_dir, self.shards = run_dir, shards
        self._seen: tuple[int, ...] | None = None  # the shards' latest snapshots' mtimes at the last assembly
        self.final_done = False

    def tick(self) -> None:
        """status.json and snapshots/latest.safetensors as they are now (a missing or torn read waits)."""
        status = shard_dir(self.run_dir, 0) / "status.json"
        if status.exists():
            _copy(status, self.run_dir / "status.json")
        paths = [shard_dir(self.run_dir, s) / "snapshots" / LATEST for s in range(self.shards)]
        try:
            stamps = tuple(p.stat().st_mtime_ns for p in paths)
        except OSError:
            return  # a shard has written none yet
        if stamps != self._seen and self._assemble(paths, self.run_dir / "snapshots" / LATEST):
            self._seen = stamps

    def finish(self) -> None:
        """At the end: the final snapshot (if every shard wrote one), updates.csv and server_summary.json."""
        self.tick()
        paths = [shard_dir(self.run_dir, s) / "snapshots" / FINAL for s in range(self.shards)]
        if not self.final_done and all(p.exists() for p in paths):
            self.final_done = self._assemble(paths, self.run_dir / "snapshots" / FINAL)
        updates = shard_dir(self.run_dir, 0) / "updates.csv"
        if updates.exists():
            _copy(updates, self.run_dir / "updates.csv")
        parts = [self._summary(s) for s in range(self.shards)]
        merged = merge_summaries(parts, self._last_known() if None in parts else None)
        if merged is not None:
            write_record_file(self.run_dir / "server_summary.json", merged)

    def endpoints(self) -> list[str] | None:
        """Every shard's endpoint in shard order, once all of them have bound."""
        endpoints = []
        for s in range(self.shards):
            info = read_json(self.run_dir / f"server-{s}.json")
            if not info:
                return None
            endpoints.append(info["endpoint"])
        return endpoints

    def _summary(self, shard: int) -> ServerSummary | None:
        return read_record(ServerSummary, shard_dir(self.run_dir, shard) / "server_summary.json")

    def _last_known(self) -> list[tuple[int, int]] | None:
        """Each shard's (parameters, last version in its status.json), for one that wrote no summary (killed);
        None when the model file cannot be read."""
        try:
            total = read_model_init(self.run_dir / MODEL_FILE).layout.total
        except ValueError:
            return None
        versions = [(read_json(shard_dir(self.run_dir, s) / "status.json") or {}).get("version", 0)
                    for s in range(self.shards)]  # fmt: skip
        return [(hi - lo, v) for (lo, hi), v in zip(shard_ranges(total, self.shards), versions)]

    def _assemble(self, paths: list[Path], out: Path) -> bool:
        try:
            snaps = [read_snapshot(p) for p in paths]
        except ValueError:
            return False  # replaced while read: the next tick reads it again
        params = torch.cat([s.params for s in snaps])
        meta: dict[str, Any] = {**snaps[0].meta, "shard_versions": [s.meta.get("version") for s in snaps]}
        meta.pop("numel", None)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_snapshot(out, params, meta, snaps[0].buffers)
        except OSError as err:
            raise WriteError(out, err) from None
        return True


def merge_summaries(
    parts: list[ServerSummary | None], last_known: list[tuple[int, int]] | None = None
) -> ServerSummary | None:
    """Shard 0's summary (its counts of pushes, staleness, time) with every shard's figures; updates is the
    smallest shard version (docs/design.md, Shards), ef_drift_max the largest drift, uplink and downlink bytes
    the sum over the shards (a shard without a summary adds nothing). last_known: each shard's (parameters,
    last version in its status.json), which count for a shard without a summary."""
    if not parts or parts[0] is None:
        return None
    merged = ServerSummary(**{**vars(parts[0])})
    merged.shards = [_shard_figures(s, p, last_known) for s, p in enumerate(parts)]
    versions = [p.updates for p in parts if p is not None]
    merged.shard_spread = max(versions) - min(versions) if len(versions) == len(parts) else None
    versions += [f["updates"] for f in merged.shards if "updates" in f and f.get("missing")]
    merged.updates = min(versions)  # an update counts once every shard has applied its part of it
    merged.num_params = sum(f.get("num_params", 0) for f in merged.shards)
    # a push's bytes are split over the shards (each gets its range): the run's traffic is the sum
    merged.uplink_bytes = sum(p.uplink_bytes for p in parts if p is not None)
    merged.downlink_bytes = sum(p.downlink_bytes for p in parts if p is not None)
    merged.ef_drift_max = max(p.ef_drift_max for p in parts if p is not None)
    merged.downlink_resets = sum(p.downlink_resets for p in parts if p is not None)
    merged.downlink_deltas = sum(p.downlink_deltas for p in parts if p is not None)
    merged.downlink_gap_max = max(p.downlink_gap_max for p in parts if p is not None)
    merged.write_errors = [f"shard {s}: {e}" for s, p in enumerate(parts) if p for e in p.write_errors]
    merged.write_errors += [f"shard {s}: no server_summary.json" for s, p in enumerate(parts) if p is None]
    return merged


def _shard_figures(shard: int, p: ServerSummary | None, last_known: list[tuple[int, int]] | None) -> dict[str, Any]:
    if p is None:
        known = {"num_params": last_known[shard][0], "updates": last_known[shard][1]} if last_known else {}
        return {"shard": shard, "missing": True, **known}
    return {
        "shard": shard,
        "num_params": p.num_params,
        "updates": p.updates,
        "updates_per_s": round(p.updates / p.wall_s, 3) if p.wall_s else 0.0,
        "wall_s": p.wall_s,
        "stop_reason": p.stop_reason,
        "pushes_applied": p.pushes_applied,
        "pushes_dropped_stale": p.pushes_dropped_stale,
        "staleness_mean": p.staleness_mean,
        "staleness_max": p.staleness_max,
        "ef_drift_max": p.ef_drift_max,
        "downlink_gap_max": p.downlink_gap_max,
        "uplink_bytes": p.uplink_bytes,
        "downlink_bytes": p.downlink_bytes,
        "time_split_s": p.time_split_s,
    }


def _copy(src: Path, dst: Path) -> None:
    """A whole copy under a temporary name, then renamed: readers see the old file or the new one."""
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        shutil.copyfile(src, tmp)
        tmp.replace(dst)
    except OSError:
        pass  # the source was being replaced: the next tick copies it
