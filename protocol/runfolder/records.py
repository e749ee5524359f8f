"""The run folder's JSON records, each defined once as a typed dataclass and built by keyword.

Writers (the server, the sync baseline's rank 0, the workers, the launcher) build a record and call
`write_record`; readers (the launcher's progress line and summary, reports, sweeps, experiments) call
`read_record(Type, path)` and use attributes, never string keys. A record read from an older run folder
that lacks a field gets the field's default; keys this version does not know are ignored.

status.json          Status         the server's live counters, rewritten every server.status_every_s
server_summary.json  ServerSummary  the server's (or sync rank 0's) final counters and time split
worker-<rank>.json   WorkerReport   one worker's pushes and where its time went
summary.json         RunSummary     the run's final figures, written by the launcher
updates.csv          PushRecord     one row per push received (see updates.py)
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

R = typing.TypeVar("R")


@dataclass(frozen=True)
class PushRecord:
    """One push as the server handled it: a row of updates.csv."""

    version: int  # server version after this push was handled
    worker: int  # rank
    base_version: int  # version of the parameters the push was computed on
    staleness: int  # version when handled - base_version
    lr: float  # the learning rate applied (0 when not applied)
    bytes: int  # bytes of the push message that crossed the socket (header + frames)
    applied: bool
    loss: float  # the worker's minibatch loss (NaN when it sent none)
    seq: int  # the worker's sequence number
    reason: str  # "ok" or why it was not applied (a Reject code, "stale", "stopped")
    wall_s: float  # seconds since training started


@dataclass
class Status:
    """status.json: what the progress line shows while the run goes on."""

    wall_s: float = 0.0
    version: int = 0
    updates: int = 0
    pushes_received: int = 0
    pushes_rejected: int = 0
    pushes_refused: int = 0  # not applied for a reason other than arriving after the stop
    messages_rejected: int = 0
    auth_rejected: int = 0
    workers_joined: int = 0
    workers: int = 0
    started: bool = False
    stopping: str | None = None
    staleness_max: int = 0
    updates_per_s: float = 0.0  # over the most recent applied pushes
    loss: float | None = None  # mean minibatch loss of the most recent applied pushes
    staleness_mean: float | None = None
    staleness_max_recent: int | None = None
    uplink_bytes: int = 0  # so far: bytes of the pushes received (as ServerSummary)
    downlink_bytes: int = 0  # so far: bytes of every message the server (sync: the group's collectives) sent
    values_clipped: int = 0  # so far: values workers clipped to the wire dtype's range (compression.values float16)
    ef_drift_max: float = 0.0  # so far: largest relative float drift of the EF21 mirror (0 without EF21, sync)
    downlink_gap_max: float = 0.0  # so far: largest ||x - w_i|| / ||x|| a compressed reply left (server.downlink)


@dataclass
class ServerSummary:
    """server_summary.json: the final counters of the server (or of sync rank 0, mode 'sync')."""

    updates: int = 0
    stop_reason: str | None = None
    wall_s: float = 0.0
    # when training started, in Unix seconds on the server's clock (wall_s and updates.csv's wall_s count from
    # here; None when it never started or for the sync baseline): ties the records to other processes' clocks
    started_unix: float | None = None
    num_params: int = 0
    pushes_received: int = 0
    pushes_applied: int = 0
    pushes_rejected: int = 0
    messages_rejected: int = 0  # undecodable messages (no push row can be written for them)
    # server.auth as it was resolved: 'curve' or 'none'; insecure: bound beyond this host without CURVE
    auth: str = "none"
    insecure: bool = False
    auth_rejected: int = 0  # connections whose CURVE handshake failed (an unknown key, no CURVE): none was read
    messages_throttled: int = 0  # messages of a peer over its admission limits (ps/admission.py), dropped unread
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    values_clipped: int = 0  # values workers clipped to the wire dtype's range (compression.values float16)
    pushes_clipped: int = 0
    steps_clipped: int = 0  # optimizer steps whose direction server.max_grad_norm scaled down
    staleness_mean: float = 0.0
    staleness_max: int = 0
    staleness_p50: int | None = None
    staleness_p99: int | None = None
    pushes_dropped_stale: int = 0
    staleness_hist: dict[str, int] = field(default_factory=dict)
    staleness_hist_by_worker: dict[str, dict[str, int]] = field(default_factory=dict)
    method: str = "none"
    compressor: str = "identity"
    compression_ratio: float | None = None  # dense float32 bytes of the pushes received / bytes on the wire
    uplink_bits_per_worker: float = 0.0
    ef_drift_max: float = 0.0
    # server.downlink (docs/design.md, Compressed downlink): replies that reset a worker's copy (the parameters
    # whole) and that carried a Top-K delta; the largest ||x - w_i|| / ||x|| a delta left (x: the parameters
    # sent, w_i: the worker's copy after the delta)
    downlink: str = "dense"
    downlink_resets: int = 0
    downlink_deltas: int = 0
    downlink_gap_max: float = 0.0
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)  # rank -> pid, host, device, pushes, applied
    server: dict[str, Any] = field(default_factory=dict)  # pid, host (and role)
    time_split_s: dict[str, float] = field(default_factory=dict)
    mode: str = "async"
    ranks_agree: bool | None = None  # sync: every rank ended with bitwise the same parameters
    replies_dropped: int = 0  # replies and heartbeats a peer's full queue could not take (never waited for)
    checkpoints_written: int = 0
    checkpoints_skipped: int = 0  # due while the previous one was still being written
    checkpoint_stall_ms_max: float = 0.0  # the longest the loop spent copying state for a checkpoint
    server_restarts: int = 0  # resumes from a checkpoint
    updates_lost: int = 0  # updates applied after the checkpoint a restart resumed from (redone since)
    workers_left: list[int] = field(default_factory=list)  # ranks that left, silent for server.worker_timeout_s
    write_errors: list[str] = field(default_factory=list)  # run-folder files that could not be written
    # server.shards > 1 (merged by the launcher from RUN/shard-s/): each shard's range size, updates, updates/s,
    # staleness and time split; shard_spread: max - min of the shards' versions at the end (updates: shard 0's)
    shards: list[dict[str, Any]] = field(default_factory=list)
    shard_spread: int | None = None


@dataclass
class WorkerReport:
    """worker-<rank>.json: one worker's pushes and where its time went (sync: wait_s = time in collectives)."""

    pushes: int = 0
    applied: int = 0
    dropped: int = 0
    rejected: int = 0
    compute_s: float = 0.0
    simulated_s: float = 0.0
    wait_s: float = 0.0
    apply_s: float = 0.0  # sync only: decoding, combining and the optimizer step
    skipped_nonfinite: int = 0  # gradients with NaN or inf that were not pushed
    pushes_clipped: int = 0  # pushes whose values were clipped to the wire dtype's range (float16: 65504)
    params_from_shm: int = 0  # replies whose parameters came from the server's shared-memory segment
    shm_fallbacks: int = 0  # ... that found no consistent version there and were pulled over ZeroMQ
    pushes_via_shm: int = 0  # dense pushes whose values went through the rank's push slot (no values frame)
    pushes_computed_in_slot: int = 0  # ... of them, whose gradient backward wrote straight into the slot (no copy)
    stop_reason: str = ""


@dataclass
class RunSummary:
    """summary.json: the run's final figures, from the server summary, the evaluations and psutil."""

    name: str = ""
    mode: str = "async"
    workers: int = 0
    optimizer: str = ""
    num_params: int | None = None
    stop_reason: str | None = None
    updates: int = 0
    pushes_received: int = 0
    pushes_applied: int = 0
    pushes_rejected: int = 0
    messages_rejected: int = 0
    auth: str | None = None  # 'curve' or 'none' (async); insecure: bound beyond this host without CURVE
    insecure: bool = False
    auth_rejected: int = 0  # connections whose CURVE handshake the server refused
    messages_throttled: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    method: str | None = None
    compression_ratio: float | None = None
    uplink_bits_per_worker: float | None = None
    ef_drift_max: float | None = None
    downlink: str | None = None  # server.downlink: dense or topk (docs/design.md, Compressed downlink)
    downlink_gap_max: float | None = None  # topk: the largest ||x - w_i|| / ||x|| a compressed reply left
    wall_s: float = 0.0
    updates_per_s: float = 0.0
    final_test_acc: float | None = None
    final_test_loss: float | None = None
    final_train_loss: float | None = None
    final_grad_norm_sq: float | None = None  # None unless run.eval_grad_norm (or the quadratic)
    best_test_acc: float | None = None
    time_to_acc_s: dict[str, float | None] = field(default_factory=dict)  # "0.9" -> seconds (None: not reached)
    staleness_mean: float = 0.0
    staleness_max: int = 0
    staleness_p50: int | None = None
    staleness_p99: int | None = None
    pushes_dropped_stale: int = 0
    evaluations: int = 0
    restarts: dict[str, int] = field(default_factory=dict)  # process name -> times the launcher restarted it
    server_restarts: int = 0  # times the server resumed from a checkpoint
    updates_lost: int = 0  # updates applied after the checkpoint a restart resumed from (redone since)
    processes: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> pid, exit, cpu %, peak RSS
    status: str = "ok"  # how the run ended: ok | failed | interrupted (SIGINT) | terminated (SIGTERM, SIGHUP)
    failure: str | None = None  # why it did not end normally: the launcher's error message (None when ok)
    pushes_refused: int = 0  # not applied for a reason other than arriving after the stop (as Status)
    write_errors: list[str] = field(default_factory=list)  # run-folder files the server or launcher could not write
    shards: list[dict[str, Any]] = field(default_factory=list)  # server.shards > 1: as server_summary.json's
    shard_spread: int | None = None  # ... max - min of the shards' versions at the end


def as_dict(record: Any) -> dict:
    return dataclasses.asdict(record)


def from_dict(cls: type[R], data: dict) -> R:
    """A record from parsed JSON: known fields only; a missing field takes its default."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


def write_record(path: Path, record: Any) -> None:
    write_json_atomic(path, as_dict(record))


def read_record(cls: type[R], path: Path) -> R | None:
    """The record in `path`, or None when the file is missing, half-written or not a JSON object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return from_dict(cls, data) if isinstance(data, dict) else None


def write_json_atomic(path: Path, data: dict) -> None:
    """Write to a temporary name, then rename: a reader sees the old file or the new one, never half."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)
