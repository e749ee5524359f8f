"""When the evaluator should stop waiting for final.safetensors: the run is over and will never write one.

Two signs, whichever comes first:
- server_summary.json exists (the server, or sync rank 0, has ended: it writes final.safetensors just before it)
  and still no final.safetensors after FINAL_GRACE_S: the final snapshot could not be written;
- nothing the run's processes write (status.json, updates.csv, snapshots, logs) changed for the idle
  timeout: the run died, or --run-dir names a folder no run writes to. A live server rewrites status.json
  every server.status_every_s, so only a dead run is that quiet.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from protocol.config.schema import ExperimentConfig

FINAL_GRACE_S = 5.0
IDLE_TIMEOUT_S = 600.0
OWN_FILES = {"metrics.jsonl", "evaluator.log"}  # the evaluator's own writes do not count as the run's activity


def default_idle_timeout(cfg: ExperimentConfig) -> float:
    """Longer than any quiet stretch of a healthy run: forming a sync group (connect_timeout_s), a step
    waiting for a slow peer (reply_timeout_s), the server's stop (stop_grace_s)."""
    s = cfg.server
    return max(IDLE_TIMEOUT_S, s.connect_timeout_s + s.reply_timeout_s + s.stop_grace_s)


class EndWatch:
    def __init__(
        self,
        run_dir: Path,
        idle_timeout_s: float,
        final_grace_s: float = FINAL_GRACE_S,
        clock: Callable[[], float] | None = None,
    ):
        self.run_dir = run_dir
        self.idle_timeout_s = idle_timeout_s
        self.final_grace_s = final_grace_s
        self.clock = clock or time.monotonic
        self._ended_at: float | None = None  # when server_summary.json was first seen
        self._last_change = latest_change(run_dir)
        self._quiet_since = self.clock()

    def verdict(self) -> str | None:
        """None while the run may still write final.safetensors; otherwise why it never will."""
        now = self.clock()
        if (self.run_dir / "server_summary.json").exists():
            self._ended_at = now if self._ended_at is None else self._ended_at
            if now - self._ended_at >= self.final_grace_s:
                return (
                    f"the run in {self.run_dir} has ended (server_summary.json) but wrote no "
                    f"snapshots/final.safetensors "
                    f"within {self.final_grace_s:g}s"
                )
        changed = latest_change(self.run_dir)
        if changed != self._last_change:
            self._last_change, self._quiet_since = changed, now
        if now - self._quiet_since >= self.idle_timeout_s:
            return (
                f"nothing in {self.run_dir} changed for {self.idle_timeout_s:g}s and it has no "
                f"snapshots/final.safetensors: "
                "the run is over or never started (see --idle-timeout)"
            )
        return None


def latest_change(run_dir: Path) -> int:
    """The newest modification time (ns) among the run folder, its logs/ and snapshots/ and their files,
    the evaluator's own files left out. Folders count too: a file appearing or renamed changes theirs."""
    newest = 0
    for folder in (run_dir, run_dir / "logs", run_dir / "snapshots"):
        try:
            newest = max(newest, folder.stat().st_mtime_ns)
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name not in OWN_FILES and entry.is_file():
                        newest = max(newest, entry.stat().st_mtime_ns)
        except OSError:
            continue  # not there (yet), or vanished while being read
    return newest
