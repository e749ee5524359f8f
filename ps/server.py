"""The parameter server's main loop. One thread owns every piece of state; pushes are applied one by one in
arrival order (docs/design.md, The server step).

on Push(rank, seq, base_version, c):
    validate sender, seq, version, encoding, shape, finiteness  -> Reject; nothing changes
    tau = version - base_version ; policy(tau) -> apply with lr, or drop
    direction = aggregator(c) ; optimizer.step(direction, lr) ; version += 1
    record the push ; reply with the fresh parameters and the new version (now, or when the gate opens)

The loop never waits on one peer: a reply a peer's queue cannot take is dropped and counted.

The loop and the push path are here; the other messages are answered in ps/answers.py, the periodic work
(heartbeats, eviction, checkpoints, status) is ps/periodic.py, the end ps/ending.py, and each Reply is built
in ps/replies.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from protocol.config.schema import ExperimentConfig
from protocol.errors import ProtocolError
from protocol.runfolder.model_init import ModelInit
from protocol.runfolder.records import ServerSummary, Status
from protocol.wire.channel import Channel, Received, ReceiveError
from protocol.wire.messages import Message, Push, Reject
from ps import answers, durable, ending
from ps.admission import Admission
from ps.gate import ReplyGate
from ps.membership import Member, Membership
from ps.model import ServedModel
from ps.outbox import Outbox
from ps.periodic import Periodic
from ps.policy import StalenessPolicy
from ps.replies import Outcome, send_reply
from ps.reporting import Reporter


class ParameterServer:
    def __init__(
        self,
        cfg: ExperimentConfig,
        channel: Channel,
        init: ModelInit,
        run_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        resume: bool = False,
        shard: int = 0,
    ):
        self.cfg, self.chan, self.run_dir, self.clock = cfg, channel, run_dir, clock
        self.shard = shard  # server.shards > 1: this server's shard (docs/design.md, Shards)
        self.t0 = clock()  # process start: join_timeout counts from here
        self.t_start: float | None = None  # training start: wall_s, max_seconds and records count from here
        self.model = ServedModel.create(cfg, init, shard)  # what is served is known before any Hello
        self.run_id = init.run_id
        self.report = Reporter(cfg, run_dir, 0, append=resume)
        self.out = Outbox(channel, self.report.counters)
        self.members = Membership(cfg, clock, self.out)
        self.admit = Admission(cfg.server, self.members.holds, clock)
        self.policy = StalenessPolicy(cfg.optimizer.lr, cfg.staleness, cfg.optimizer.schedule, cfg.run.max_updates)
        self.gate = ReplyGate(cfg.staleness.ssp, cfg.staleness.barrier)
        self.held: dict[int, Outcome] = {}  # per rank: the outcome of its push, sent when the gate opens
        self.uplink = "ef21" if cfg.compression.ef21 else "grad"
        self.stop_reason: str | None = None
        self._stop_at = 0.0
        self._signalled: str | None = None
        self.periodic = Periodic(self)
        self._handlers: dict[type[Message], Callable[[Received], None]] = {Push: self._on_push}
        self._handlers.update(answers.handlers(self))
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
            if self._signalled:
                self.request_stop(self._signalled)
            self.periodic.tick()
        return ending.finish(self)

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
            answers.on_bad_message(self, err)
            return
        self.report.timing["receive_s"] += time.perf_counter() - t1
        handler = self._handlers.get(type(got.msg))
        if handler is None:
            self.report.counters.messages_rejected += 1
            self.send(got.identity, Reject("bad_type", f"a server does not accept {got.msg.TYPE} messages"))
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
            self.tell_stop(self.members.identity(rank), rank)
        self.members.pending.clear()
        self.gate.clear()

    def wall(self) -> float:
        return self.clock() - self.t_start if self.t_start is not None else 0.0

    def _done(self) -> bool:
        if self.stop_reason is None:
            return False
        return self.members.told_everyone() or self.clock() - self._stop_at > self.cfg.server.stop_grace_s

    # -- the push path -------------------------------------------------------------------------------
    def _on_push(self, got: Received) -> None:
        push, identity = got.msg, got.identity
        assert isinstance(push, Push) and identity is not None
        # a push from a shared-memory slot counts its values too (docs/design.md, Shared-memory pushes)
        got = got._replace(nbytes=got.nbytes + (4 * self.model.numel if push.values_in_shm else 0))
        self.report.counters.uplink_bytes += got.nbytes
        tau = self.version - push.base_version
        if self.stop_reason is not None:
            self._record(push, got.nbytes, tau, "stopped")
            return self.tell_stop(identity, push.rank)
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
        decision = self.policy.decide(tau, self.version)
        stepped = decision.accept and self.model.apply(push.rank, staged, decision.lr, stream=push.shm)
        member.applied += decision.accept
        self._record(push, got.nbytes, tau, decision.reason, decision.lr)
        self.held[push.rank] = member.last_outcome = Outcome(
            decision.accept, decision.reason, tau, decision.lr, push.seq, push.shm, push.rank, push.copy_id
        )
        t1 = time.perf_counter()
        for rank in self.gate.pushed(push.rank, stepped):
            self.reply(self.members.identity(rank), self.held.pop(rank))
        t2 = time.perf_counter()
        self.model.settle()  # what no reply waits for (EF21: g_i's share of a sparse delta): counted as apply
        self.report.timing["apply_s"] += (t1 - t0) + (time.perf_counter() - t2)
        self.report.timing["reply_s"] += t2 - t1
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
        assert member.last_outcome is not None  # _check_push lets a resend through only when there is one
        if push.rank not in self.held:
            self.reply(identity, member.last_outcome)

    def _reject_push(self, identity: bytes, push: Push, err: ProtocolError) -> None:
        member = self.members.members.get(push.rank)
        expected = member.last_seq + 1 if member is not None and member.identity == identity else -1
        self.send(identity, Reject(err.code, err.message, rank=push.rank, seq=push.seq, expected_seq=expected))

    def _record(self, push: Push, nbytes: int, tau: int, reason: str, lr: float = 0.0) -> None:
        self.report.record_push(push, nbytes, tau, reason, lr, version=self.version, wall_s=self.wall())

    # -- sending (for the push path and ps/answers.py) --------------------------------------------------
    def reply(self, identity: bytes, outcome: Outcome) -> None:
        send_reply(self.out, self.model, identity, outcome)

    def send(self, identity: bytes | None, msg: Message) -> None:
        self.out.send(identity, msg)

    def reachable(self, identity: bytes) -> bool:
        return self.out.reachable(identity, self.version)

    def tell_stop(self, identity: bytes, rank: int) -> None:
        self.members.tell_stop(identity, rank, self.stop_reason or "stopped", self.version)

    def start_training(self) -> None:
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
            downlink_gap_max=self.model.downlink.gap_max if self.model.downlink is not None else 0.0,
        )
