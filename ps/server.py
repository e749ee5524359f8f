"""The parameter server's main loop. One thread owns every piece of state; pushes are applied one by
one in arrival order (docs/design.md, The server step).

on Push(rank, seq, base_version, c):
    validate sender, seq, version, encoding, shape, finiteness  -> Reject; nothing changes
    tau = version - base_version ; policy(tau) -> apply with lr, or drop
    direction = aggregator(c) ; optimizer.step(direction, lr) ; version += 1
    record the push ; reply with the fresh parameters and the new version
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from protocol.config.schema import ExperimentConfig
from protocol.errors import ProtocolError
from protocol.runfolder.records import Counters, PushRecord, UpdateLog, write_json_atomic
from protocol.runfolder.snapshot import Snapshotter
from protocol.wire.buffers import SendPool
from protocol.wire.channel import Channel, ReceiveError
from protocol.wire.codec import fresh_allocator
from protocol.wire.encoding import require_finite
from protocol.wire.layout import Layout
from protocol.wire.messages import Heartbeat, Hello, Message, Pull, Push, Reject, Reply, Stop, Welcome
from ps.aggregate import make_aggregator
from ps.arena import RecvArena
from ps.gate import ReplyGate
from ps.history import ParamHistory
from ps.optim import make_optimizer
from ps.policy import StalenessPolicy

COPY_BELOW_BYTES = 4 << 20  # measured: copying is 3x faster than tracked zero-copy at 1 MiB, 2x slower at 16 MiB


@dataclass
class WorkerInfo:
    rank: int
    identity: bytes
    pid: int
    host: str
    device: str
    last_seq: int = -1
    pushes: int = 0
    applied: int = 0


class ParameterServer:
    def __init__(self, cfg: ExperimentConfig, channel: Channel, run_dir: Path | None = None, clock=time.monotonic):
        self.cfg = cfg
        self.chan = channel
        self.run_dir = run_dir
        self.clock = clock
        self.t0 = clock()  # process start: join_timeout counts from here
        self.t_start: float | None = None  # training start: wall_s, max_seconds and records count from here
        self._pending: list[int] = []  # ranks that joined and wait for the start (wait_for_workers)
        self._next_heartbeat = 0.0
        self._signalled: str | None = None
        self.counters = Counters()
        # where the loop's time goes: waiting, receiving + decoding, the optimizer step, copying + sending
        self.timing = {"idle_s": 0.0, "receive_s": 0.0, "apply_s": 0.0, "reply_s": 0.0}
        self.log = UpdateLog(run_dir / "updates.csv" if run_dir else None)
        self.workers: dict[int, WorkerInfo] = {}
        self.version = 0
        self.params: torch.Tensor | None = None
        self.layout: Layout | None = None
        self.stop_reason: str | None = None
        self._stop_at = 0.0
        self._stopped: set[int] = set()
        self._next_status = 0.0
        self._next_snapshot = 0.0
        self._alloc = fresh_allocator(cfg.server.max_message_bytes)
        self.policy = StalenessPolicy(cfg.optimizer.lr, cfg.staleness)
        self.gate = ReplyGate(cfg.staleness.ssp, cfg.staleness.barrier)
        self.history: ParamHistory | None = None
        self._replies: dict[int, Reply] = {}  # per rank: the outcome of its push, sent when the gate opens
        self._group_lrs: list[float] = []  # lrs of the pushes averaged into the next step (apply_every)
        self.snapshots = Snapshotter(run_dir / "snapshots", 0) if run_dir else None

    # -- main loop -------------------------------------------------------------------------------
    def serve(self) -> dict:
        """Serve until the run ends and every worker was told to stop; returns the summary."""
        while not self._done():
            t0 = time.perf_counter()
            ready = self.chan.poll(0.05)
            t1 = time.perf_counter()
            self.timing["idle_s"] += t1 - t0
            if ready:
                try:
                    identity, msg = self.chan.recv(timeout_s=0, alloc=self._alloc)
                except ReceiveError as err:
                    self._on_bad_message(err)
                else:
                    self.timing["receive_s"] += time.perf_counter() - t1
                    self._dispatch(identity, msg)
            self._tick()
        return self._finish()

    def signal_stop(self, reason: str) -> None:
        """Safe from a signal handler: only sets a flag that the loop acts on at its next tick."""
        self._signalled = reason

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self._stop_at = self.clock()
            # workers waiting for the start or for their held reply: nothing else will reach them
            for rank in self._pending + self.gate.waiting():
                self._tell_stop(self.workers[rank].identity, rank)
            self._pending.clear()
            self.gate.held.clear()

    def wall(self) -> float:
        return self.clock() - self.t_start if self.t_start is not None else 0.0

    def _start_training(self) -> None:
        """Welcome every waiting worker with the same version-0 parameters and start the clock."""
        self.t_start = self.clock()
        for rank in self._pending:
            self.gate.join(rank)
            self._welcome(self.workers[rank].identity, self.workers[rank])
        self._pending.clear()

    def _done(self) -> bool:
        if self.stop_reason is None:
            return False
        told_all = all(rank in self._stopped for rank in self.workers)
        return told_all or self.clock() - self._stop_at > self.cfg.server.stop_grace_s

    def _dispatch(self, identity: bytes, msg: Message) -> None:
        if isinstance(msg, Push):
            self._on_push(identity, msg)
        elif isinstance(msg, Hello):
            self._on_hello(identity, msg)
        elif isinstance(msg, Pull):
            self._on_pull(identity, msg)
        elif isinstance(msg, Heartbeat):
            self._send(identity, Heartbeat(rank=-1, version=self.version))
        else:
            self.counters.messages_rejected += 1
            self._send(identity, Reject("bad_type", f"a server does not accept {msg.TYPE} messages"))

    # -- joining -----------------------------------------------------------------------------------
    def _on_hello(self, identity: bytes, hello: Hello) -> None:
        if self.stop_reason is not None:
            self._tell_stop(identity, hello.rank)
            return
        try:
            self._check_hello(hello)
            if self.params is None:
                self._initialise(hello)
        except ProtocolError as err:
            self.counters.messages_rejected += 1
            self._send(identity, Reject(err.code, err.message, rank=hello.rank))
            return
        old = self.workers.get(hello.rank)
        info = WorkerInfo(hello.rank, identity, hello.pid, hello.host, hello.device)
        if old is not None:  # a rejoin continues the rank's sequence
            info.last_seq, info.pushes, info.applied = old.last_seq, old.pushes, old.applied
        self.workers[hello.rank] = info
        if self.t_start is not None:
            self.gate.join(hello.rank)
            self._welcome(identity, info)
            return
        self._pending = [r for r in self._pending if r != hello.rank] + [hello.rank]
        if not self.cfg.server.wait_for_workers or len(self.workers) == self.cfg.workers:
            self._start_training()

    def _welcome(self, identity: bytes, info: WorkerInfo) -> None:
        settings = {"workers": self.cfg.workers, "optimizer": self.cfg.optimizer.name, "uplink": self.agg.uplink}
        assert self.layout is not None
        self._send_params(
            identity,
            Welcome(
                version=self.version,
                next_seq=info.last_seq + 1,
                layout=self.layout.to_wire(),
                settings=settings,
            ),
        )

    def _check_hello(self, hello: Hello) -> None:
        if not 0 <= hello.rank < self.cfg.workers:
            raise ProtocolError("unknown_rank", f"rank {hello.rank} is outside 0..{self.cfg.workers - 1}")
        layout = Layout.from_signature(hello.signature)
        if self.layout is not None and layout != self.layout:
            raise ProtocolError("bad_shape", f"rank {hello.rank}'s model does not match the served layout")
        expected = "ef21" if self.cfg.compression.ef21 else "grad"
        if hello.uplink != expected:
            raise ProtocolError(
                "bad_encoding",
                f"rank {hello.rank} pushes '{hello.uplink}', server expects "
                f"'{expected}' (compression.method {self.cfg.compression.method})",
            )
        if self.params is None:
            if hello.init is None or hello.init.numel() != layout.total or hello.init.dtype != torch.float32:
                raise ProtocolError("bad_shape", "the first hello must carry float32 initial parameters")
            require_finite(hello.init, "initial parameters")

    def _initialise(self, hello: Hello) -> None:
        layout = Layout.from_signature(hello.signature)
        numel = layout.total
        st = self.cfg.staleness
        if st.delay != "none":  # checked before anything is set: a refused hello leaves no half-state
            need = ParamHistory.memory_mb(numel, st.delay_versions)
            if need > st.delay_memory_mb:
                raise ProtocolError(
                    "config",
                    f"staleness.delay_versions={st.delay_versions} needs {need:.0f} MB "
                    f"for {numel} parameters, over staleness.delay_memory_mb="
                    f"{st.delay_memory_mb:g}",
                )
        assert hello.init is not None
        self.layout = layout
        self.params = hello.init.reshape(-1).clone()
        self.opt = make_optimizer(self.params, self.cfg.optimizer)
        self.agg = make_aggregator(self.cfg.compression.ef21, numel, self.cfg.compression.resync_every, st.apply_every)
        if st.delay != "none":
            self.history = ParamHistory(numel, st.delay_versions, st.delay, self.cfg.seed)
            self.history.record(0, self.params)
        self.pool = SendPool(numel)
        self._alloc = RecvArena(numel, self.cfg.server.max_message_bytes)
        if self.snapshots is not None:
            self.snapshots = Snapshotter(self.snapshots.folder, numel)

    # -- pushes ------------------------------------------------------------------------------------
    def _on_push(self, identity: bytes, push: Push) -> None:
        nbytes = self.chan.last_recv_bytes
        record = PushRecord(
            self.version,
            push.rank,
            push.base_version,
            self.version - push.base_version,
            0.0,
            nbytes,
            False,
            push.loss,
            push.seq,
            "ok",
            self.wall(),
        )
        self.counters.uplink_bytes += nbytes
        if self.stop_reason is not None:
            record.reason = "stopped"
            self._record(record)
            self._tell_stop(identity, push.rank)
            return
        t0 = time.perf_counter()
        try:
            worker = self._check_push(identity, push)
            staged = self.agg.stage(push)
        except ProtocolError as err:
            record.reason = err.code
            self._record(record)
            info = self.workers.get(push.rank)
            expected = info.last_seq + 1 if info and info.identity == identity else -1
            self._send(identity, Reject(err.code, err.message, rank=push.rank, seq=push.seq, expected_seq=expected))
            return
        worker.last_seq = push.seq
        worker.pushes += 1
        decision = self.policy.decide(record.staleness)
        stepped = False
        if decision.accept:
            stepped = self._apply(push.rank, staged, decision.lr)
            worker.applied += 1
            record.version, record.lr, record.applied = self.version, decision.lr, True
        else:
            record.reason = decision.reason
        self._record(record)
        t1 = time.perf_counter()
        self._replies[push.rank] = Reply(
            applied=decision.accept,
            reason=record.reason,
            staleness=record.staleness,
            version=self.version,
            lr=record.lr,
        )
        for rank in self.gate.pushed(push.rank, stepped):
            self._release(rank)
        self.timing["apply_s"] += t1 - t0
        self.timing["reply_s"] += time.perf_counter() - t1
        if self.version >= self.cfg.run.max_updates:
            self.request_stop("max_updates")

    def _apply(self, rank: int, staged, lr: float) -> bool:
        """Fold an accepted push in; step the optimizer when a group of apply_every pushes is complete."""
        self._group_lrs.append(lr)
        direction = self.agg.apply(rank, staged)
        if direction is None:
            return False
        group_lr = sum(self._group_lrs) / len(self._group_lrs)  # apply_every: the mean lr of the group
        self._group_lrs.clear()
        self.opt.step(direction, group_lr, rank)
        self.version += 1
        if self.history is not None:
            self.history.record(self.version, self.params)
        return True

    def _release(self, rank: int) -> None:
        """Send rank its held reply with the parameters of now (or, with an artificial delay, older ones)."""
        reply = self._replies.pop(rank)
        reply.version = self.version  # the parameters go out now, so does their version
        self._send_params(self.workers[rank].identity, reply)

    def _check_push(self, identity: bytes, push: Push) -> WorkerInfo:
        info = self.workers.get(push.rank)
        if info is None or info.identity != identity or self.params is None:
            raise ProtocolError("unknown_rank", f"rank {push.rank} has not joined from this connection")
        if push.seq != info.last_seq + 1:
            raise ProtocolError("bad_seq", f"rank {push.rank} sent seq {push.seq}, expected {info.last_seq + 1}")
        if push.base_version > self.version:
            raise ProtocolError("future_version", f"base_version {push.base_version} > server version {self.version}")
        if push.base_version < 0:
            raise ProtocolError("bad_field", f"base_version {push.base_version} < 0")
        return info

    def _record(self, record: PushRecord) -> None:
        self.counters.add(record)
        self.log.write(record)

    def _on_pull(self, identity: bytes, pull: Pull) -> None:
        if self.stop_reason is not None:
            self._tell_stop(identity, pull.rank)
        elif self.params is None:
            self._send(identity, Reject("not_ready", "no worker has initialised the parameters yet", rank=pull.rank))
        else:
            self._send_params(identity, Reply(applied=False, reason="pull", staleness=0, version=self.version, lr=0.0))

    def _on_bad_message(self, err: ReceiveError) -> None:
        self.counters.messages_rejected += 1
        if err.identity is not None:
            rank = err.header.get("rank", -1)
            self._send(err.identity, Reject(err.code, err.message, rank=rank if isinstance(rank, int) else -1))

    # -- replies -----------------------------------------------------------------------------------
    def _send_params(self, identity: bytes, msg: Reply | Welcome) -> None:
        """Send the current parameters. The next push modifies them in place, so the bytes on the wire
        must be a copy: up to COPY_BELOW_BYTES ZeroMQ copies them (cheapest, and its buffers stay warm in
        cache); above, a pooled snapshot goes out zero-copy and is reused once ZeroMQ releases it."""
        assert self.params is not None
        source = self.params
        if self.history is not None and isinstance(msg, Reply):
            msg.version, source = self.history.pick(self.version)  # the worker computes at that version
        if source.numel() * 4 <= COPY_BELOW_BYTES:
            msg.params = source
            self._send(identity, msg, copy=True)
            return
        buf = self.pool.snapshot(source)
        msg.params = buf
        tracker = self._send(identity, msg, track=True)
        self.pool.sent(buf, tracker)

    def _send(self, identity: bytes, msg: Message, track: bool = False, copy: bool = False):
        try:
            tracker = self.chan.send(msg, to=identity, track=track, copy=copy)
        except (ConnectionError, TimeoutError):
            return None  # the peer left; the launcher notices a dead worker, not the server
        self.counters.downlink_bytes += self.chan.last_send_bytes
        return tracker

    def _tell_stop(self, identity: bytes, rank: int) -> None:
        self._send(identity, Stop(reason=self.stop_reason or "stopped", version=self.version))
        self._stopped.add(rank)

    # -- periodic work -------------------------------------------------------------------------------
    def _tick(self) -> None:
        now = self.clock()
        if self._signalled:
            self.request_stop(self._signalled)
        if self.t_start is None:
            self._tick_waiting(now)
        elif self.stop_reason is None and now - self.t_start >= self.cfg.run.max_seconds:
            self.request_stop("max_seconds")
        elif self.gate.held and now >= self._next_heartbeat:  # held by ssp or the barrier: keep them waiting
            self._next_heartbeat = now + 1.0
            self._heartbeat(self.gate.waiting())
        if now >= self._next_status:
            self._next_status = now + self.cfg.server.status_every_s
            self.log.flush()
            if self.run_dir:
                write_json_atomic(self.run_dir / "status.json", self.status())
        if self.snapshots is not None and self.t_start is not None and now >= self._next_snapshot:
            self._next_snapshot = now + self.cfg.run.eval_every_s
            self.snapshots.offer(self.params, self._snapshot_meta())

    def _tick_waiting(self, now: float) -> None:
        """Before the start: keep joined workers waiting (heartbeats), start anyway after join_timeout_s."""
        if self._pending and now - self.t0 >= self.cfg.server.join_timeout_s:
            self._start_training()
        elif now >= self._next_heartbeat:
            self._next_heartbeat = now + 1.0
            self._heartbeat(self._pending)

    def _heartbeat(self, ranks: list[int]) -> None:
        for rank in ranks:
            self._send(self.workers[rank].identity, Heartbeat(rank=-1, version=self.version))

    def _snapshot_meta(self) -> dict:
        return {"version": self.version, "wall_s": self.wall(), "train_loss_pushed": self.counters.window()["loss"]}

    def status(self) -> dict:
        c = self.counters
        return {
            "wall_s": self.wall(),
            "version": self.version,
            "updates": c.pushes_applied,
            "pushes_received": c.pushes_received,
            "pushes_rejected": c.pushes_rejected,
            "messages_rejected": c.messages_rejected,
            "workers_joined": len(self.workers),
            "workers": self.cfg.workers,
            "started": self.t_start is not None,
            "pushes_refused": c.pushes_rejected - c.reasons.get("stopped", 0),
            "staleness_max": c.staleness_max,
            "stopping": self.stop_reason,
            **c.window(),
        }

    def _compression_summary(self) -> dict:
        c, n = self.counters, (self.layout.total if self.layout else 0)
        return {
            "method": self.cfg.compression.method,
            "compressor": self.cfg.compression.compressor,
            "compression_ratio": c.pushes_received * 4 * n / c.uplink_bytes if c.uplink_bytes else None,
            "uplink_bits_per_worker": 8 * c.uplink_bytes / self.cfg.workers,
            "ef_drift_max": self.agg.drift_max if self.params is not None else 0.0,
        }

    def _finish(self) -> dict:
        self.log.close()
        if self.params is not None and hasattr(self.agg, "recompute"):
            self.agg.recompute()  # measure the drift left at the end too
        summary = {
            "updates": self.version,
            "stop_reason": self.stop_reason,
            "wall_s": self.wall(),
            "num_params": self.layout.total if self.layout else 0,
            **self.counters.summary(),
            **self._compression_summary(),
            "workers": {
                r: {"pid": w.pid, "host": w.host, "device": w.device, "pushes": w.pushes, "applied": w.applied}
                for r, w in sorted(self.workers.items())
            },
            "server": {"pid": os.getpid(), "host": socket.gethostname()},
            "time_split_s": {k: round(v, 4) for k, v in self.timing.items()},
        }
        if self.run_dir:
            if self.snapshots is not None and self.params is not None:
                self.snapshots.final(self.params, self._snapshot_meta())
            write_json_atomic(self.run_dir / "status.json", self.status())
            write_json_atomic(self.run_dir / "server_summary.json", summary)
        return summary
