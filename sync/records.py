"""What rank 0 of the synchronous baseline records: the server's files, written by the server's Reporter.

updates.csv          one row per rank per step: version = step number after the step, worker = rank,
                     base_version = step before, staleness 0, lr, bytes (what the rank put into the
                     step's collective: its packed push, or its dense all-reduce buffer), applied 1,
                     loss, seq = step before, reason ok, wall_s
status.json          every server.status_every_s; `updates` counts steps (N pushes make one step)
snapshots/           latest.safetensors every run.eval_every_s and run.eval_every_updates steps (background
                     thread), final.safetensors at the end
server_summary.json  the server's record (staleness all 0, ef_drift_max 0), with mode 'sync', this rank's
                     time split and whether every rank ended with the same parameters
"""

from __future__ import annotations

import os
import socket
from collections import deque
from pathlib import Path

import torch

from protocol.config.schema import ExperimentConfig
from protocol.runfolder.records import PushRecord, ServerSummary, Status
from ps.reporting import Reporter
from sync.collective import Round


class SyncRecorder:
    def __init__(self, cfg: ExperimentConfig, run_dir: Path | None, numel: int, world: int):
        self.cfg, self.numel, self.world = cfg, numel, world
        self.report = Reporter(cfg, run_dir, numel)
        self.steps = 0
        self.wall_s = 0.0
        self.stopping: str | None = None
        self._recent_steps: deque = deque(maxlen=100)  # (wall_s, step): the progress line's rate

    def record(self, step: int, wall_s: float, lr: float, rnd: Round) -> None:
        """Rows for every rank's contribution to step `step` (1-based: the version it produced)."""
        self.steps, self.wall_s = step, wall_s
        self._recent_steps.append((wall_s, step))
        for rank in range(self.world):
            self.report.record(
                PushRecord(
                    version=step,
                    worker=rank,
                    base_version=step - 1,
                    staleness=0,
                    lr=lr,
                    bytes=rnd.sent[rank],
                    applied=True,
                    loss=rnd.losses[rank],
                    seq=step - 1,
                    reason="ok",
                    wall_s=wall_s,
                )
            )
            self.report.counters.uplink_bytes += rnd.sent[rank]
        self.report.counters.downlink_bytes += rnd.received * self.world  # every rank received as much as rank 0

    def tick(self, wall_s: float, params: torch.Tensor, buffers: torch.Tensor | None = None) -> None:
        """status.json and the evaluator's snapshot (rank 0's parameters and buffers), each on its cadence."""
        if self.report.snapshot_due(wall_s, True, self.steps):
            self.report.snapshot(self.status(), params, buffers)
        self.report.tick(wall_s, self.status())

    def status(self) -> Status:
        status = self.report.status(
            wall_s=self.wall_s, version=self.steps, workers_joined=self.world, started=True, stopping=self.stopping
        )
        status.updates, status.updates_per_s = self.steps, 0.0  # steps, not pushes
        if len(self._recent_steps) > 1:
            (t0, s0), (t1, s1) = self._recent_steps[0], self._recent_steps[-1]
            status.updates_per_s = (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0
        return status

    def finish(
        self,
        params: torch.Tensor,
        stop_reason: str,
        ranks: list[dict],
        time_split: dict,
        ranks_agree: bool,
        buffers: torch.Tensor | None = None,
    ) -> ServerSummary:
        """Final snapshot, status.json and server_summary.json (the server's record); returns the summary."""
        self.stopping = stop_reason
        summary = self.report.summary(
            updates=self.steps,
            stop_reason=stop_reason,
            wall_s=self.wall_s,
            num_params=self.numel,
            ef_drift_max=0.0,  # every rank holds the one g; nothing mirrors it, so nothing can drift
            workers={str(r): {**info, "pushes": self.steps, "applied": self.steps} for r, info in enumerate(ranks)},
            server={"pid": os.getpid(), "host": socket.gethostname(), "role": "sync rank 0"},
            time_split_s={k: round(v, 4) for k, v in time_split.items()},
            mode="sync",
            ranks_agree=ranks_agree,
        )
        self.report.finish(summary, self.status(), params, buffers)
        return summary
