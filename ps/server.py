"""The parameter server's main loop. One thread owns every piece of state; pushes are applied one by one in
arrival order (docs/design.md, The server step).

on Push(rank, seq, base_version, c):
    validate sender, seq, version, encoding, shape, finiteness  -> Reject; nothing changes
    tau = version - base_version ; policy(tau) -> apply with lr, or drop
    direction = aggregator(c) ; optimizer.step(direction, lr) ; version += 1
    record the push ; reply with the fresh parameters and the new version (now, or when the gate opens)

The loop never waits on one peer: a reply a peer's queue cannot take is dropped and counted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from protocol.config.schema import ExperimentConfig
from protocol.errors import ProtocolError
from protocol.runfolder.model_init import ModelInit
from protocol.runfolder.records import ServerSummary, Status
from protocol.wire.channel import Channel, Received, ReceiveError
from protocol.wire.endpoints import is_local
from protocol.wire.messages import Heartbeat, Hello, Message, Pull, Push, Reject, Reply
from ps import durable
from ps.admission import Admission
from ps.gate import ReplyGate
from ps.membership import Member, Membership
from ps.model import ServedModel
from ps.outbox import Outbox
from ps.policy import StalenessPolicy
from ps.reporting import Reporter


@dataclass(frozen=True)
class Outcome:
    """What a Reply says about the push it answers."""

    applied: bool
    reason: str
    staleness: int
    lr: float
    seq: int = -1


PULLED = Outcome(False, "pull", 0, 0.0)


log = logging.getLogger("ps")


class ParameterServer:
    def __init__(
        self,
        cfg: ExperimentConfig,
        channel: Channel,
        init: ModelInit,
        run_dir: Path | None = None,
        clock=time.monotonic,
        resume: bool = False,
    ):
        self.cfg, self.chan, self.run_dir, self.clock = cfg, channel, run_dir, clock
        self.t0 = clock()  # process start: join_timeout counts from here
        self.t_start: float | None = None  # training start: wall_s, max_seconds and records count from here
        self.model = ServedModel.create(cfg, init)  # what is served is known before any Hello
        self.run_id = init.run_id
        self.report = Reporter(cfg, run_dir, 0, append=resume)
        self.out = Outbox(channel, self.report.counters)
        self.members = Membership(cfg, clock, self.out)
        self.admit = Admission(cfg.server, self.members.holds, clock)
        self.policy = StalenessPolicy(cfg.optimizer.lr, cfg.staleness)
        self.gate = ReplyGate(cfg.staleness.ssp, cfg.staleness.barrier)
        self.held: dict[int, Outcome] = {}  # per rank: the outcome of its push, sent when the gate opens
        self.uplink = "ef21" if cfg.compression.ef21 else "grad"
        self.stop_reason: str | None = None
        self._stop_at = 0.0
        self._signalled: str | None = None
        self._next_heartbeat = 0.0
        self._handlers = {Push: self._on_push, Hello: self._on_hello, Pull: self._on_pull, Heartbeat: self._on_beat}
        self.plan = durable.schedule(self)  # checkpoints (None without a run folder)
        self.evicted: list[int] = []
        if resume:
            assert self.plan is not None, "resuming needs the run folder"
            self.t_start = clock() - durable.resume(self, self.plan)  # the workers rejoin a running run

    @property
    def version(self) -> int:
        return self.model.version

    @property
    def params(self) -> torch.Tensor:
        return self.model.params

    # -- main loop -------------------------------------------------------------------------------
    def serve(self) -> ServerSummary:
        """Serve until the run ends and every worker was told to stop; returns the summary."""
        while not self._done():
            self._receive_one()
            self._tick()
        return self._finish()

    def _receive_one(self) -> None:
        t0 = time.perf_counter()
        ready = self.chan.poll(0.05)
        t1 = time.perf_counter()
        self.report.timing["idle_s"] += t1 - t0
        if not ready:
            return
        try:
            got = self.chan.recv(timeout_s=0, alloc=self.model.arena, admit=self.admit)
        except ReceiveError as err:
            self._on_bad_message(err)
            return
        self.report.timing["receive_s"] += time.perf_counter() - t1
        handler = self._handlers.get(type(got.msg))
        if handler is None:
            self.report.counters.messages_rejected += 1
            self._send(got.identity, Reject("bad_type", f"a server does not accept {got.msg.TYPE} messages"))
        else:
            handler(got)

    def signal_stop(self, reason: str) -> None:
        """Safe from a signal handler: only sets a flag that the loop acts on at its next tick."""
        self._signalled = reason

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is not None:
            return
        self.stop_reason, self._stop_at = reason, self.clock()
        for rank in self.members.pending + self.gate.waiting():  # nothing else will reach them
            self._tell_stop(self.members.identity(rank), rank)
        self.members.pending.clear()
        self.gate.clear()

    def wall(self) -> float:
        return self.clock() - self.t_start if self.t_start is not None else 0.0

    def _done(self) -> bool:
        if self.stop_reason is None:
            return False
        return self.members.told_everyone() or self.clock() - self._stop_at > self.cfg.server.stop_grace_s

    # -- joining -----------------------------------------------------------------------------------
    def _on_hello(self, got: Received) -> None:
        hello, identity = got.msg, got.identity
        assert isinstance(hello, Hello) and identity is not None
        if self.stop_reason is not None:
            return self._tell_stop(identity, hello.rank)
        try:
            self.members.check_hello(hello, self.model, self.run_id, self.uplink)
            self.members.check_key(hello.rank, got.user, self.chan.curve)
            self.members.check_free(hello.rank, identity, self._reachable)
        except ProtocolError as err:
            self.report.counters.messages_rejected += 1
            return self._send(identity, Reject(err.code, err.message, rank=hello.rank))
        member = self.members.join(hello, identity, got.user)
        self.held.pop(hello.rank, None)  # a reply held for the rank's old connection: that connection is gone
        self.gate.forget(hello.rank)
        self.model.forget_buffers(hello.rank)
        if self.t_start is not None:
            self.gate.join(hello.rank)
            self.model.set_group(min(self.cfg.staleness.apply_every, self.members.live()))
            self.members.welcome(member, self.model, self.uplink)
        elif self.members.wait_for_start(hello.rank):
            self._start_training()

    def _on_push(self, got: Received) -> None:
        push, identity = got.msg, got.identity
        assert isinstance(push, Push) and identity is not None
        self.report.counters.uplink_bytes += got.nbytes
        tau = self.version - push.base_version
        if self.stop_reason is not None:
            self._record(push, got.nbytes, tau, "stopped")
            return self._tell_stop(identity, push.rank)
        t0 = time.perf_counter()
        try:
            member = self._check_push(identity, push, got.user)
            if push.seq == member.last_seq:  # a resend of the last push: answered again, never applied twice
                return self._replay(identity, push, got.nbytes, member)
            staged = self.model.stage(push)
        except ProtocolError as err:
            self._record(push, got.nbytes, tau, err.code)
            return self._reject_push(identity, push, err)
        member.last_seq, member.pushes = push.seq, member.pushes + 1
        self.report.counters.note_clipped(push.meta.get("clipped"))
        self.model.note_buffers(push.rank, push.buffers)
        decision = self.policy.decide(tau)
        stepped = decision.accept and self.model.apply(push.rank, staged, decision.lr)
        member.applied += decision.accept
        self._record(push, got.nbytes, tau, decision.reason, decision.lr)
        self.held[push.rank] = member.last_outcome = Outcome(
            decision.accept, decision.reason, tau, decision.lr, push.seq
        )
        t1 = time.perf_counter()
        for rank in self.gate.pushed(push.rank, stepped):
            self._reply(self.members.identity(rank), self.held.pop(rank))
        self.report.timing["apply_s"] += t1 - t0
        self.report.timing["reply_s"] += time.perf_counter() - t1
        if self.version >= self.cfg.run.max_updates:
            self.request_stop("max_updates")

    def _check_push(self, identity: bytes, push: Push, user: str) -> Member:
        member = self.members.sender(push.rank, identity, user)
        if push.seq == member.last_seq and member.last_outcome is not None:
            return member  # a resend: answered again (or, while its reply is held, once the gate opens)
        if push.rank in self.held:
            raise ProtocolError("bad_seq", f"rank {push.rank} pushed again before the reply to its last push")
        if push.seq != member.last_seq + 1:
            raise ProtocolError("bad_seq", f"rank {push.rank} sent seq {push.seq}, expected {member.last_seq + 1}")
        if push.base_version > self.version:
            raise ProtocolError("future_version", f"base_version {push.base_version} > server version {self.version}")
        if push.base_version < 0:
            raise ProtocolError("bad_field", f"base_version {push.base_version} < 0")
        return member

    def _replay(self, identity: bytes, push: Push, nbytes: int, member: Member) -> None:
        """The worker resent its last push (its reply was lost, or is slow): the same outcome again, with the
        parameters of now. Recorded as not applied (reason duplicate): it was applied once, when it came."""
        self._record(push, nbytes, self.version - push.base_version, "duplicate")
        if push.rank not in self.held:
            self._reply(identity, member.last_outcome)

    def _reject_push(self, identity: bytes, push: Push, err: ProtocolError) -> None:
        member = self.members.members.get(push.rank)
        expected = member.last_seq + 1 if member is not None and member.identity == identity else -1
        self._send(identity, Reject(err.code, err.message, rank=push.rank, seq=push.seq, expected_seq=expected))

    def _record(self, push: Push, nbytes: int, tau: int, reason: str, lr: float = 0.0) -> None:
        self.report.record_push(push, nbytes, tau, reason, lr, version=self.version, wall_s=self.wall())

    def _on_pull(self, got: Received) -> None:
        pull, identity = got.msg, got.identity
        assert isinstance(pull, Pull) and identity is not None
        if self.stop_reason is not None:
            return self._tell_stop(identity, pull.rank)
        try:
            self.members.sender(pull.rank, identity, got.user)
        except ProtocolError as err:
            self.report.counters.messages_rejected += 1
            return self._send(identity, Reject(err.code, err.message, rank=pull.rank))
        self._reply(identity, PULLED)

    def _on_beat(self, got: Received) -> None:
        rank = self.members.rank_of(got.identity or b"", got.user)
        if rank is not None:
            self.members.members[rank].last_seen = self.clock()
        self._send(got.identity, Heartbeat(rank=-1, version=self.version))

    def _on_bad_message(self, err: ReceiveError) -> None:
        throttled = err.code == "throttled" or (err.identity is not None and self.admit.over_budget(err.identity))
        if throttled:  # unanswered: an answer is what a flood would cost the loop
            self.report.counters.messages_throttled += 1
            return
        self.report.counters.messages_rejected += 1
        if err.identity is not None:  # the rank and seq it named, so a worker knows which request this answers
            rank, seq = (err.header.get(k, -1) for k in ("rank", "seq"))
            rank, seq = (v if type(v) is int else -1 for v in (rank, seq))
            self._send(err.identity, Reject(err.code, err.message, rank=rank, seq=seq))

    # -- sending -----------------------------------------------------------------------------------
    def _reply(self, identity: bytes, outcome: Outcome) -> None:
        """The one place a Reply is built: the outcome, and the parameters of now (or, delayed, older ones)."""
        version, source = self.model.outgoing(delayed=True)
        reply = Reply(outcome.applied, outcome.reason, outcome.staleness, version, outcome.lr, outcome.seq)
        self.out.send_params(identity, reply, source, self.model.pool)

    def _send(self, identity: bytes | None, msg: Message) -> None:
        self.out.send(identity, msg)

    def _reachable(self, identity: bytes) -> bool:
        return self.out.reachable(identity, self.version)

    def _tell_stop(self, identity: bytes, rank: int) -> None:
        self.members.tell_stop(identity, rank, self.stop_reason or "stopped", self.version)

    # -- periodic work -------------------------------------------------------------------------------
    def _tick(self) -> None:
        now = self.clock()
        if self.chan.curve:
            self.report.counters.auth_rejected += self.chan.handshake_failures()
        if self._signalled:
            self.request_stop(self._signalled)
        if self.t_start is None:
            self._tick_waiting(now)
        elif self.stop_reason is None and now - self.t_start >= self.cfg.run.max_seconds:
            self.request_stop("max_seconds")
        elif now >= self._next_heartbeat:  # once a second: the waiting get a heartbeat, the silent leave
            self._next_heartbeat = now + 1.0
            self.members.heartbeat(self.gate.waiting(), self.version)
            self._evict()
        if (
            self.plan
            and self.stop_reason is None
            and self.model.at_boundary()
            and self.plan.due(self.wall(), self.version)
        ):
            durable.checkpoint(self, self.plan)
        if self.report.snapshot_due(now, self.t_start is not None, self.version):
            self.report.snapshot(self.status(), self.params, self.model.mean_buffers())
        self.report.tick(now, self.status())

    def _evict(self) -> None:
        """Workers silent for server.worker_timeout_s leave: nobody waits for them (SSP, the barrier, a group),
        EF21 drops their g_i; too few left stops the run."""
        for rank in self.members.silent(set(self.held)):
            self.members.leave(rank)
            self.gate.leave(rank)
            self.model.agg.drop(rank)
            self.evicted.append(rank)
            log.warning("worker %d left: silent for %gs", rank, self.cfg.server.worker_timeout_s)
        if not self.evicted or self.stop_reason is not None:
            return
        live = self.members.live()
        if live < self.cfg.run.min_workers:
            return self.request_stop(
                f"too_few_workers: {live} left of {self.cfg.workers} (workers {self.evicted} left)"
            )
        stepped = self.model.set_group(min(self.cfg.staleness.apply_every, live))
        for rank in self.gate.release_barrier() if stepped or self.gate.barrier_full(live) else []:
            self._reply(self.members.identity(rank), self.held.pop(rank))

    def _tick_waiting(self, now: float) -> None:
        """Before the start: keep joined workers waiting (heartbeats), start anyway after join_timeout_s."""
        if self.members.pending and now - self.t0 >= self.cfg.server.join_timeout_s:
            self._start_training()
        elif now >= self._next_heartbeat:
            self._next_heartbeat = now + 1.0
            self.members.heartbeat(self.members.pending, self.version)

    def _start_training(self) -> None:
        """Welcome every waiting worker with the same version-0 parameters and start the clock."""
        self.t_start = self.clock()
        self.model.set_group(min(self.cfg.staleness.apply_every, self.members.live()))
        for rank in self.members.pending:
            self.gate.join(rank)
        self.members.welcome_pending(self.model, self.uplink)

    def status(self) -> Status:
        return self.report.status(
            wall_s=self.wall(),
            version=self.version,
            workers_joined=len(self.members.members),
            started=self.t_start is not None,
            stopping=self.stop_reason,
            ef_drift_max=self.model.agg.drift_max,
        )

    def _finish(self) -> ServerSummary:
        model = self.model
        model.agg.recompute()  # measure the drift left at the end too
        if self.plan is not None and self.cfg.checkpoint.at_end and model.at_boundary():
            durable.checkpoint(self, self.plan, final=True)
        summary = self.report.summary(
            updates=self.version,
            stop_reason=self.stop_reason,
            wall_s=self.wall(),
            num_params=model.numel,
            ef_drift_max=model.agg.drift_max,
            steps_clipped=model.steps_clipped,
            workers={str(r): m.report() for r, m in sorted(self.members.members.items())},
            replies_dropped=self.out.dropped,
            **(durable.summary_fields(self.plan) if self.plan else {}),
            workers_left=sorted(set(self.evicted)),
            auth="curve" if self.chan.curve else "none",
            insecure=not self.chan.curve and not is_local(self.chan.endpoint or ""),
        )
        self.report.finish(summary, self.status(), self.params, model.mean_buffers())
        return summary
