"""What the server leaves in the run folder while it serves: updates.csv, status.json, snapshots, and at the
end server_summary.json and final.safetensors. The synchronous baseline's rank 0 writes the same files through it.

Recording never stops training: a write that fails (a full disk) is counted and reported, and the loop
goes on. Snapshots are copied into a reusable buffer on the loop and written by a background thread.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import torch

from protocol.config.schema import ExperimentConfig
from protocol.runfolder.counters import Counters
from protocol.runfolder.records import PushRecord, ServerSummary, Status, write_record
from protocol.runfolder.snapshot import Snapshotter
from protocol.runfolder.updates import UpdateLog
from protocol.wire.messages import Push

log = logging.getLogger("ps")


class Reporter:
    def __init__(self, cfg: ExperimentConfig, run_dir: Path | None, numel: int, append: bool = False):
        self.cfg = cfg
        self.run_dir = run_dir
        self.counters = Counters()
        self.log = UpdateLog(run_dir / "updates.csv" if run_dir else None, append=append)
        self.snapshots = Snapshotter(run_dir / "snapshots", numel) if run_dir else None
        # where the loop's time goes: waiting, receiving + decoding, the optimizer step, copying + sending
        self.timing = {"idle_s": 0.0, "receive_s": 0.0, "apply_s": 0.0, "reply_s": 0.0}
        self.write_errors: list[str] = []
        self._next_status = 0.0
        self._next_snapshot = 0.0
        self._update_mark = 0  # version // run.eval_every_updates at the last snapshot it made due

    def record(self, r: PushRecord) -> None:
        self.counters.add(r)
        self.log.write(r)

    def record_push(
        self, push: Push, nbytes: int, tau: int, reason: str, lr: float, version: int, wall_s: float
    ) -> None:
        """One push as handled (reason "ok": applied at lr); version is the server's after handling it."""
        applied = reason == "ok"
        self.record(
            PushRecord(
                version=version,
                worker=push.rank,
                base_version=push.base_version,
                staleness=tau,
                lr=lr if applied else 0.0,
                bytes=nbytes,
                applied=applied,
                loss=push.loss,
                seq=push.seq,
                reason=reason,
                wall_s=wall_s,
            )
        )

    def tick(self, now: float, status: Status) -> None:
        """status.json every server.status_every_s (and updates.csv flushed with it)."""
        if now >= self._next_status:
            self._next_status = now + self.cfg.server.status_every_s
            self.log.flush()
            self._write("status.json", status)

    def snapshot_due(self, now: float, started: bool, version: int) -> bool:
        """Whether a snapshot for the evaluator is due once training started: every run.eval_every_s, and
        each time `version` crossed a multiple of run.eval_every_updates since the last call."""
        if self.snapshots is None or not started:
            return False
        by_updates = self._crossed_update_mark(version)
        if now < self._next_snapshot:
            return by_updates
        self._next_snapshot = now + self.cfg.run.eval_every_s
        return True

    def _crossed_update_mark(self, version: int) -> bool:
        """True once per multiple of run.eval_every_updates reached (several crossed between two calls, as
        a grouped step or a slow tick may do, still make one snapshot: of the parameters of now)."""
        every = self.cfg.run.eval_every_updates
        if every <= 0 or version // every <= self._update_mark:
            return False
        self._update_mark = version // every
        return True

    def snapshot(self, status: Status, params: torch.Tensor, buffers: torch.Tensor | None = None) -> None:
        if self.snapshots is not None:
            self.snapshots.offer(params, self.snapshot_meta(status), buffers)

    def status(self, **fields: Any) -> Status:
        """status.json from the counters plus the caller's fields (wall_s, version, started, ...)."""
        c = self.counters
        return Status(
            updates=c.pushes_applied,
            pushes_received=c.pushes_received,
            pushes_rejected=c.pushes_rejected,
            pushes_refused=c.pushes_rejected - c.reasons.get("stopped", 0),
            messages_rejected=c.messages_rejected,
            auth_rejected=c.auth_rejected,
            workers=self.cfg.workers,
            staleness_max=c.staleness_max,
            uplink_bytes=c.uplink_bytes,
            downlink_bytes=c.downlink_bytes,
            values_clipped=c.values_clipped,
            **c.window(),
            **fields,
        )

    def snapshot_meta(self, status: Status) -> dict[str, Any]:
        return {"version": status.version, "wall_s": status.wall_s, "train_loss_pushed": status.loss}

    def summary(self, **fields: Any) -> ServerSummary:
        """The server summary from the counters plus the caller's fields (updates, stop_reason, ...)."""
        c, n = self.counters, fields.get("num_params", 0)
        comp = self.cfg.compression
        return ServerSummary(
            **c.summary_fields(),
            method=comp.method,
            compressor=comp.compressor,
            compression_ratio=c.pushes_received * 4 * n / c.uplink_bytes if c.uplink_bytes else None,
            uplink_bits_per_worker=8 * c.uplink_bytes / self.cfg.workers,
            server=fields.pop("server", {"pid": os.getpid(), "host": socket.gethostname()}),
            time_split_s=fields.pop("time_split_s", {k: round(v, 4) for k, v in self.timing.items()}),
            **fields,
        )

    def finish(
        self, summary: ServerSummary, status: Status, params: torch.Tensor | None, buffers: torch.Tensor | None = None
    ) -> None:
        """Close updates.csv; write final.safetensors, the last status.json and server_summary.json."""
        self.log.close()
        if self.log.error:
            self.write_errors.append(f"updates.csv: {self.log.error} ({self.log.rows_lost} rows not written)")
        if self.snapshots is not None and params is not None:
            try:
                self.snapshots.final(params, self.snapshot_meta(status), buffers)
            except OSError as err:
                self.write_errors.append(f"snapshots/final.safetensors: {err}")
        self._write("status.json", status)
        summary.write_errors = list(self.write_errors)
        self._write("server_summary.json", summary)

    def _write(self, name: str, record: Any) -> None:
        if self.run_dir is None:
            return
        try:
            write_record(self.run_dir / name, record)
        except OSError as err:  # a full disk must not stop training; say so once per file
            message = f"{name}: {type(err).__name__}: {err}"
            if message not in self.write_errors:
                self.write_errors.append(message)
                log.warning("could not write %s (training goes on)", message)
