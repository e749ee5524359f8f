"""The server loop's periodic work, done after every message (or 50 ms without one): before the start, keep
the joined workers waiting or start without the missing ones; during the run, stop at run.max_seconds, once a
second send heartbeats to the workers whose replies are held and let silent workers go; checkpoints, snapshots
and status.json when due."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ps import durable

if TYPE_CHECKING:
    from ps.server import ParameterServer

log = logging.getLogger("ps")

HEARTBEAT_S = 1.0


class Periodic:
    def __init__(self, server: ParameterServer):
        self.server = server
        self.next_heartbeat = 0.0

    def tick(self) -> None:
        s = self.server
        now = s.clock()
        if s.chan.curve:
            s.report.counters.auth_rejected += s.chan.handshake_failures()
        if s.t_start is None:
            self._waiting(now)
        elif s.stop_reason is None and now - s.t_start >= s.cfg.run.max_seconds:
            s.request_stop("max_seconds")
        elif now >= self.next_heartbeat:  # the waiting get a heartbeat, the silent leave
            self.next_heartbeat = now + HEARTBEAT_S
            s.members.heartbeat(s.gate.waiting(), s.version)
            self._evict()
        if s.plan and s.stop_reason is None and s.model.at_boundary() and s.plan.due(s.wall(), s.version):
            durable.checkpoint(s, s.plan)
        if s.report.snapshot_due(now, s.t_start is not None, s.version):
            s.report.snapshot(s.status(), s.params, s.model.mean_buffers())
        s.report.tick(now, s.status())

    def _waiting(self, now: float) -> None:
        """Before the start: keep joined workers waiting (heartbeats), start anyway after join_timeout_s."""
        s = self.server
        if s.members.pending and now - s.t0 >= s.cfg.server.join_timeout_s:
            s.start_training()
        elif now >= self.next_heartbeat:
            self.next_heartbeat = now + HEARTBEAT_S
            s.members.heartbeat(s.members.pending, s.version)

    def _evict(self) -> None:
        """Workers silent for server.worker_timeout_s leave: nobody waits for them (SSP, the barrier, a group),
        EF21 drops their g_i; too few left stops the run."""
        s = self.server
        for rank in s.members.silent(set(s.held)):
            s.members.leave(rank)
            s.gate.leave(rank)
            s.model.agg.drop(rank)
            if s.model.downlink is not None:
                s.model.downlink.forget(rank)  # its copy of the parameters: a rank that joins again gets a reset
            s.evicted.append(rank)
            log.warning("worker %d left: silent for %gs", rank, s.cfg.server.worker_timeout_s)
        if not s.evicted or s.stop_reason is not None:
            return
        live = s.members.live()
        if live < s.cfg.run.min_workers:
            return s.request_stop(f"too_few_workers: {live} left of {s.cfg.workers} (workers {sorted(s.evicted)} left)")
        stepped = s.model.set_group(min(s.cfg.staleness.apply_every, live))
        for rank in s.gate.release_barrier() if stepped or s.gate.barrier_full(live) else []:
            s.reply(s.members.identity(rank), s.held.pop(rank))
