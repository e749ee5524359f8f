"""What rank 0 of the synchronous baseline records: the files the parameter server writes, same format.

updates.csv          one row per rank per step: version = step number after the step, worker = rank,
                     base_version = step before, staleness 0, lr, bytes (what the rank put into the
                     step's collective: its packed push, or its dense all-reduce buffer), applied 1,
                     loss, seq = step before, reason ok, wall_s
status.json          every server.status_every_s, the keys the launcher's progress line reads
snapshots/           latest.snap every run.eval_every_s (background thread), final.snap at the end
server_summary.json  the server's keys (staleness stats all 0, ef_drift_max 0), with this rank's time split

Counters and writers come from protocol/runfolder/records.py and protocol/runfolder/snapshot.py, shared with ps/.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from pathlib import Path

import torch

from protocol.config.schema import ExperimentConfig
from protocol.runfolder.records import Counters, PushRecord, UpdateLog, write_json_atomic
from protocol.runfolder.snapshot import Snapshotter
from sync.collective import Round


class SyncRecorder:
    def __init__(self, cfg: ExperimentConfig, run_dir: Path | None, numel: int, world: int):
        self.cfg, self.run_dir, self.numel, self.world = cfg, run_dir, numel, world
        self.counters = Counters()
        self.log = UpdateLog(run_dir / "updates.csv" if run_dir else None)
        self.snapshots = Snapshotter(run_dir / "snapshots", numel) if run_dir else None
        self.steps = 0
        self.wall_s = 0.0
        self.stopping: str | None = None
        self._recent_steps: deque = deque(maxlen=100)  # (wall_s, step): the progress line's rate
        self._next_status = 0.0
        self._next_snapshot = 0.0

    def record(self, step: int, wall_s: float, lr: float, rnd: Round) -> None:
        """Rows for every rank's contribution to step `step` (1-based: the version it produced)."""
        self.steps, self.wall_s = step, wall_s
        self._recent_steps.append((wall_s, step))
        for rank in range(self.world):
            r = PushRecord(step, rank, step - 1, 0, lr, rnd.sent[rank], True, rnd.losses[rank], step - 1, "ok", wall_s)
            self.counters.add(r)
            self.counters.uplink_bytes += r.bytes
            self.log.write(r)
        self.counters.downlink_bytes += rnd.received * self.world  # every rank received as much as rank 0

    def tick(self, wall_s: float, params: torch.Tensor) -> None:
        """status.json and the evaluator's snapshot, each on its own cadence."""
        if self.run_dir is None:
            return
        if wall_s >= self._next_status:
            self._next_status = wall_s + self.cfg.server.status_every_s
            self.log.flush()
            write_json_atomic(self.run_dir / "status.json", self.status())
        if self.snapshots is not None and wall_s >= self._next_snapshot:
            self._next_snapshot = wall_s + self.cfg.run.eval_every_s
            self.snapshots.offer(params, self._snapshot_meta())

    def status(self) -> dict:
        c, window = self.counters, self.counters.window()
        window["updates_per_s"] = 0.0  # steps per second, not pushes (N pushes make one step)
        if len(self._recent_steps) > 1:
            (t0, s0), (t1, s1) = self._recent_steps[0], self._recent_steps[-1]
            window["updates_per_s"] = (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0
        return {
            "wall_s": self.wall_s,
            "version": self.steps,
            "updates": self.steps,
            "pushes_received": c.pushes_received,
            "pushes_rejected": 0,
            "messages_rejected": 0,
            "workers_joined": self.world,
            "workers": self.world,
            "started": True,
            "pushes_refused": 0,
            "staleness_max": 0,
            "stopping": self.stopping,
            **window,
        }

    def _snapshot_meta(self) -> dict:
        return {"version": self.steps, "wall_s": self.wall_s, "train_loss_pushed": self.counters.window()["loss"]}

    def finish(
        self, params: torch.Tensor, stop_reason: str, ranks: list[dict], time_split: dict, ranks_agree: bool
    ) -> dict:
        """Final snapshot, status.json and server_summary.json (the async server's keys); returns the summary."""
        self.stopping = stop_reason
        self.log.close()
        c = self.counters
        summary = {
            "updates": self.steps,
            "stop_reason": stop_reason,
            "wall_s": self.wall_s,
            "num_params": self.numel,
            **c.summary(),
            "method": self.cfg.compression.method,
            "compressor": self.cfg.compression.compressor,
            "compression_ratio": c.pushes_received * 4 * self.numel / c.uplink_bytes if c.uplink_bytes else None,
            "uplink_bits_per_worker": 8 * c.uplink_bytes / self.world,
            "ef_drift_max": 0.0,  # every rank holds the one g; nothing mirrors it, so nothing can drift
            "workers": {r: {**info, "pushes": self.steps, "applied": self.steps} for r, info in enumerate(ranks)},
            "server": {"pid": os.getpid(), "host": socket.gethostname(), "role": "sync rank 0"},
            "time_split_s": {k: round(v, 4) for k, v in time_split.items()},
            "mode": "sync",
            "ranks_agree": ranks_agree,
        }
        if self.run_dir:
            if self.snapshots is not None:
                self.snapshots.final(params, self._snapshot_meta())
            write_json_atomic(self.run_dir / "status.json", self.status())
            write_json_atomic(self.run_dir / "server_summary.json", summary)
        return summary
