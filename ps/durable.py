"""When the server checkpoints, and how it resumes (the state itself: ps/state.py; the files: ps/checkpoint.py).

Checkpoints are due every checkpoint.every_s seconds of training and every checkpoint.every_updates
updates, taken only between groups (no apply_every group half folded in), and at the end. A resume loads
the newest whole checkpoint, puts its state into the fresh server, cuts updates.csv back to the rows the
checkpoint had seen, and counts the updates lost since (what status.json had reached before the crash
minus the checkpoint's version): training goes on from there as soon as the workers rejoin.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from protocol.runfolder.records import Status, read_record
from protocol.runfolder.updates import UPDATE_COLUMNS
from ps.checkpoint import Checkpointer, load_latest
from ps.state import capture, restore

if TYPE_CHECKING:
    from ps.server import ParameterServer

log = logging.getLogger("ps")


def identity(server: ParameterServer) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the model, and the config keys that shape the state."""
    cfg, model = server.cfg, server.model
    shard = {"shard": [model.shard, cfg.server.shards, model.lo, model.lo + model.numel]}
    return {
        **(shard if cfg.server.shards > 1 else {}),  # a shard resumes only its own range
        "layout": server.model.layout.signature(),
        "buffer_layout": server.model.buffer_layout.signature(),
        "workers": cfg.workers,
        "optimizer.name": cfg.optimizer.name,
        "optimizer.form": cfg.optimizer.form,
        "optimizer.momentum_mode": cfg.optimizer.momentum_mode,
        "compression.method": cfg.compression.method,
        "staleness.apply_every": cfg.staleness.apply_every,
        "staleness.delay": cfg.staleness.delay,
        "staleness.delay_versions": cfg.staleness.delay_versions,
    }


@dataclass
class Schedule:
    """The checkpoints of one server: their writer and when the next one is due."""

    writer: Checkpointer
    every_s: float
    every_updates: int
    next_at_s: float = 0.0
    next_version: int = 0
    restarts: int = 0  # resumes of this run so far (carried from checkpoint to checkpoint)
    updates_lost: int = 0  # applied, then lost to crashes: not in any checkpoint resumed from

    def due(self, wall_s: float, version: int) -> bool:
        timer = self.every_s > 0 and wall_s >= self.next_at_s
        count = self.every_updates > 0 and version >= self.next_version
        return timer or count

    def taken(self, wall_s: float, version: int) -> None:
        self.next_at_s = wall_s + self.every_s
        self.next_version = version + self.every_updates


def schedule(server: ParameterServer) -> Schedule | None:
    ck = server.cfg.checkpoint
    if server.run_dir is None:
        return None
    writer = Checkpointer(server.run_dir / "checkpoints", ck.keep, identity(server))
    return Schedule(writer, ck.every_s, ck.every_updates, ck.every_s, ck.every_updates)


def checkpoint(server: ParameterServer, plan: Schedule, final: bool = False) -> None:
    """Offer a checkpoint now (in the background), or at the end write the last one."""
    state = capture(server)
    state.facts.update(
        updates_csv_bytes=server.report.log.position(), restarts=plan.restarts, updates_lost=plan.updates_lost
    )
    if final:
        plan.writer.final(state)
    else:
        plan.writer.offer(state)
    plan.taken(state.wall_s, state.version)


def resume(server: ParameterServer, plan: Schedule) -> float:
    """Restore the newest whole checkpoint into `server`; returns the wall time trained before it. Raises
    CheckpointMismatch for another model or config, FileNotFoundError when there is none."""
    assert server.run_dir is not None
    found = load_latest(plan.writer.folder, plan.writer.identity)
    before = read_record(Status, server.run_dir / "status.json")
    if found is None:  # it died before its first checkpoint: everything is redone from the initial model
        log.warning("no checkpoint in %s: starting again from the initial model", plan.writer.folder)
        server.report.log.truncate(len(",".join(UPDATE_COLUMNS)) + 1)
        plan.restarts, plan.updates_lost = 1, before.version if before else 0
        return before.wall_s if before else 0.0
    state, path = found
    restore(server, state)
    server.report.log.truncate(int(state.facts.get("updates_csv_bytes", -1)))
    plan.restarts = int(state.facts.get("restarts", 0)) + 1
    lost = max(0, before.version - state.version) if before else 0
    plan.updates_lost = int(state.facts.get("updates_lost", 0)) + lost
    plan.taken(state.wall_s, state.version)
    log.info("resumed from %s at version %d (%d updates lost since it)", path.name, state.version, lost)
    return state.wall_s


def summary_fields(plan: Schedule) -> dict[str, Any]:
    """What server_summary.json says of checkpoints and restarts."""
    stats = plan.writer.stats
    return {
        "checkpoints_written": stats.written,
        "checkpoints_skipped": stats.skipped,
        "checkpoint_stall_ms_max": round(stats.stall_ms_max, 2),
        "server_restarts": plan.restarts,
        "updates_lost": plan.updates_lost,
    }
