"""A worker of a run with server shards (server.shards > 1; docs/design.md, Shards).

Shard s owns the coordinates [lo_s, hi_s) of the flat parameters (protocol.wire.layout.shard_ranges) and has its
own version clock, sequence numbers and socket. Per step the worker cuts its push into one part per shard
(protocol.wire.encoding.slice_payload: the same encoding and values, so each shard decodes exactly the
push's values over its range), sends every part before it waits for any answer, then collects every answer
(each wait bounded, as ServerLink's). Each reply's parameters land straight in the shard's range of the
parameter buffer. Error feedback follows every shard's verdict over its own range (Uplink.commit_parts).

A Stop from any shard ends the worker; it passes the Stop on to every other shard, so that they end too.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import torch

from protocol.config.schema import ExperimentConfig
from protocol.errors import ProtocolError
from protocol.wire import codec
from protocol.wire.channel import Channel
from protocol.wire.encoding import Payload, slice_payload
from protocol.wire.messages import Message, Push, Reject, Reply, Stop, Welcome
from worker.link import LinkError, ServerLink
from worker.loop import MAX_CONSECUTIVE_REJECTS, REJOIN, WorkerError, WorkerLoop
from worker.tasks import Task

log = logging.getLogger("worker")


@dataclass
class Shard:
    """One server shard as this worker sees it: its range, socket, clock and sequence number."""

    index: int
    lo: int
    hi: int
    chan: Channel
    link: ServerLink
    version: int = 0
    seq: int = 0
    copy_id: int = -1  # server.downlink topk: the id of this shard's copy of its range (worker/downlink.py)


class ShardedLoop(WorkerLoop):
    """WorkerLoop with one socket per server shard; `channels[s]` is connected to shard s."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        rank: int,
        channels: list[Channel],
        task: Task | None = None,
        run_id: str = "",
        cancel: threading.Event | None = None,
    ):
        super().__init__(cfg, rank, channels[0], task=task, run_id=run_id, cancel=cancel)
        ranges = self.task.net.layout.shard_ranges(len(channels))
        self.shards = [self._shard(s, lo, hi, chan) for s, ((lo, hi), chan) in enumerate(zip(ranges, channels))]

    def _shard(self, index: int, lo: int, hi: int, chan: Channel) -> Shard:
        quiet = type(self.stats)()  # each link's own wait is not the worker's: the whole fan-out is (_fan)
        link = ServerLink(self.cfg, chan, self._range_alloc(lo, hi), quiet, self._check_cancel, self.clock)
        return Shard(index, lo, hi, chan, link)

    def _range_alloc(self, lo: int, hi: int) -> codec.Allocator:
        """A shard's parameters go straight into its range of the (host) parameter buffer."""

        def alloc(cls: type[Message], spec: codec.TensorSpec) -> torch.Tensor:
            if spec.name != "params":
                return self._fallback(cls, spec)
            if spec.dtype != "float32" or spec.numel != hi - lo:
                raise ProtocolError("bad_shape", f"shard sent {spec.numel} {spec.dtype} parameters, not {hi - lo}")
            return self._receive_params()[lo:hi]

        return alloc

    # -- joining ---------------------------------------------------------------------------------------
    def _join(self) -> bool:
        answers = self._fan({sh.index: self._hello() for sh in self.shards}, self.cfg.server.connect_timeout_s)
        if self._stopped_by(answers):
            return False
        for sh in self.shards:
            self._welcomed(sh, answers[sh.index])
        self._load_params()
        log.info("rank %d joined %d shards at versions %s", self.rank, len(self.shards), self.versions())
        return True

    def _welcomed(self, sh: Shard, reply: Message) -> None:
        if isinstance(reply, Reject):
            raise WorkerError(f"shard {sh.index} refused rank {self.rank}: {reply.code}: {reply.message}")
        if not isinstance(reply, Welcome):
            raise WorkerError(f"expected a welcome from shard {sh.index}, got {reply.TYPE}")
        if reply.layout != self.task.net.layout.to_wire():
            raise WorkerError("the server serves a different parameter layout than this worker's model")
        if reply.settings.get("shard") != [sh.index, sh.lo, sh.hi]:
            raise WorkerError(f"shard {sh.index} serves {reply.settings.get('shard')}, not [{sh.lo}, {sh.hi})")
        sh.version, sh.seq = reply.version, reply.next_seq
        sh.copy_id = self._take(reply, self.host_params[sh.lo : sh.hi], sh.copy_id)

    def versions(self) -> list[int]:
        return [sh.version for sh in self.shards]

    # -- pushing ---------------------------------------------------------------------------------------
    def _push(self, kind: str, payload: Payload, loss: float, samples: int) -> bool:
        buffers = self._buffers_due()
        pushes: dict[int, Message] = {
            sh.index: self._part(sh, kind, payload, loss, samples, buffers) for sh in self.shards
        }
        answers = self._fan(pushes)
        self.stats.pushes += 1
        if self._stopped_by(answers):
            return True
        parts = [(sh.lo, sh.hi, self._answered(sh, answers[sh.index])) for sh in self.shards]
        self.uplink.commit_parts(parts)
        self._count(parts, answers)
        self._load_params()
        return self._rejoin_refused(answers)

    def _part(
        self, sh: Shard, kind: str, payload: Payload, loss: float, samples: int, buffers: torch.Tensor | None
    ) -> Push:
        part = slice_payload(payload, sh.lo, sh.hi)
        meta = dict(part.meta)
        meta.pop("g_sq", None)
        g = self.uplink.mirror()
        if g is not None and kind == "delta" and self.shards[0].seq % self.cfg.compression.resync_every == 0:
            meta["g_sq"] = float(g[sh.lo : sh.hi].double().square().sum())  # the shard checks its own range
        return Push(rank=self.rank, seq=sh.seq, base_version=sh.version, kind=kind, encoding=part.encoding,
                    numel=part.numel, loss=loss, samples=samples, meta=meta, values=part.values,
                    indices=part.indices, signs=part.signs, buffers=buffers if sh.index == 0 else None,
                    copy_id=sh.copy_id)  # fmt: skip

    def _answered(self, sh: Shard, reply: Message) -> bool:
        """Follow one shard's answer (its clock, sequence number); whether it applied its part."""
        if isinstance(reply, Reply):
            sh.seq, sh.version = sh.seq + 1, reply.version
            sh.copy_id = self._take(reply, self.host_params[sh.lo : sh.hi], sh.copy_id)
            return reply.applied
        if not isinstance(reply, Reject):
            raise WorkerError(f"unexpected {reply.TYPE} message from shard {sh.index} in reply to a push")
        if reply.expected_seq >= 0:
            sh.seq = reply.expected_seq
        if reply.code == "bad_seq":
            self.uplink.resync()  # that shard's copy of our state may differ: the next push resets every shard
        log.warning("shard %d rejected push %d: %s: %s", sh.index, reply.seq, reply.code, reply.message)
        return False

    def _count(self, parts: list[tuple[int, int, bool]], answers: dict[int, Message]) -> None:
        rejects = [m for m in answers.values() if isinstance(m, Reject)]
        if rejects:
            self.stats.rejected += 1
            self._rejects_in_a_row += 1
        else:
            self._rejects_in_a_row = 0
            self.stats.applied += all(applied for _, _, applied in parts)
            self.stats.dropped += not all(applied for _, _, applied in parts)
        fatal = [m for m in rejects if m.code in ("bad_version", "bad_type", "bad_run")]
        if fatal or self._rejects_in_a_row >= MAX_CONSECUTIVE_REJECTS:
            worst = (fatal or rejects)[0]
            raise WorkerError(f"server rejected push {worst.seq}: {worst.code}: {worst.message}")

    def _rejoin_refused(self, answers: dict[int, Message]) -> bool:
        """Join again the shards that no longer know this worker (restarted); True when one said Stop."""
        for sh in self.shards:
            reply = answers[sh.index]
            if isinstance(reply, Reject) and reply.code in REJOIN:
                log.warning("rank %d joins shard %d again (%s: %s)", self.rank, sh.index, reply.code, reply.message)
                self.rejoins += 1
                self.uplink.resync()
                again = self._fan({sh.index: self._hello()}, self.cfg.server.connect_timeout_s)
                if self._stopped_by(again):
                    return True
                self._welcomed(sh, again[sh.index])
                self._load_params()
        return False

    # -- the fan-out -----------------------------------------------------------------------------------
    def _fan(self, requests: dict[int, Message], timeout_s: float | None = None) -> dict[int, Message]:
        """Send each shard its request, then collect every answer (each wait bounded by the link)."""
        t0 = self.clock()
        try:
            for s, msg in requests.items():
                self.shards[s].link.send(msg)
            got = {s: self.shards[s].link.collect(timeout_s) for s in requests}
        except TimeoutError:
            raise WorkerError(f"a server shard did not answer rank {self.rank} within {timeout_s:.0f}s") from None
        except LinkError as err:
            raise WorkerError(str(err)) from None
        self.stats.wait_s += self.clock() - t0
        return got

    def _stopped_by(self, answers: dict[int, Message]) -> bool:
        """Whether a shard said Stop; if one did, every other shard is told (it ends the run too) and answers
        with its own Stop, awaited at most server.stop_grace_s (a socket closed at once would drop the news)."""
        stop = next((m for m in answers.values() if isinstance(m, Stop)), None)
        if stop is None:
            return False
        self.stats.stop_reason = stop.reason
        others = [sh for sh in self.shards if not isinstance(answers.get(sh.index), Stop)]
        try:
            for sh in others:
                sh.link.send(Stop(reason=stop.reason, version=sh.version))
            for sh in others:
                sh.link.collect(self.cfg.server.stop_grace_s)
        except (LinkError, TimeoutError) as err:
            log.warning("rank %d could not pass the Stop on to every shard: %s", self.rank, err)
        return True


def make_loop(
    cfg: ExperimentConfig, rank: int, channels: list[Channel], task: Task, run_id: str, cancel: threading.Event
) -> WorkerLoop:
    """A WorkerLoop for one server, a ShardedLoop for several."""
    if len(channels) == 1:
        return WorkerLoop(cfg, rank, channels[0], task=task, run_id=run_id, cancel=cancel)
    return ShardedLoop(cfg, rank, channels, task=task, run_id=run_id, cancel=cancel)
