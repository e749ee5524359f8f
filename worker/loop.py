"""The worker's main loop (docs/design.md, The worker step).

join (Hello -> Welcome: parameters, version, next seq)
loop: x, version = last reply
      grad = minibatch gradient at x              (cpu or cuda; simulated slowdown after it)
      kind, payload = uplink.prepare(grad)         (dense gradient, or an error-feedback message)
      push(payload, base_version=version) -> Reply (fresh x, new version) | Reject | Stop
      uplink.commit(applied)
until the server says Stop.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

import torch

from protocol.config.schema import ExperimentConfig
from protocol.errors import ProtocolError
from protocol.runfolder.records import WorkerReport
from protocol.wire import codec
from protocol.wire.channel import Channel
from protocol.wire.curve import WorkerKeys
from protocol.wire.encoding import Payload, is_finite
from protocol.wire.faults import injector
from protocol.wire.messages import Hello, Message, Pull, Push, Reject, Reply, Stop, Welcome
from worker import downlink
from worker.compressors import make_compressor
from worker.ef import Uplink, make_uplink
from worker.link import LinkError, ServerLink
from worker.shm_params import ShmParams
from worker.step import Stepper
from worker.tasks import Task, rank_seed
from worker.tasks.flat import FlatModel

log = logging.getLogger("worker")
MAX_CONSECUTIVE_REJECTS = 20
# the server no longer knows this connection, or a version the worker has: it joins again and goes on
REJOIN = ("unknown_rank", "future_version")
MAX_NONFINITE = 20  # gradients with NaN/inf in a row before the worker gives up
CLIPPED_WARN_AFTER = 100  # pushes in a row with values clipped to the wire dtype before a warning
COMPRESSOR_STREAM = 1  # the compressor's random stream is independent of the sampling stream


def rank_uplink(cfg: ExperimentConfig, rank: int, net: FlatModel) -> Uplink:
    """This rank's error-feedback uplink (and compressor, with its own random stream) for the model `net`.

    The synchronous baseline (sync/loop.py) builds its uplinks here too, so both modes compress alike.
    """
    comp = cfg.compression
    compressor = None
    if comp.method != "none":
        compressor = make_compressor(comp, net.layout, rank_seed(cfg.seed, rank, stream=COMPRESSOR_STREAM))
    return make_uplink(comp, net.numel, compressor, net.params.device)


def worker_channel(cfg: ExperimentConfig, rank: int, keys: WorkerKeys | None = None) -> Channel:
    """A worker's DEALER channel as the config says (frame size, message cap, send timeout, faults), with
    CURVE when given the rank's keys (then a refused handshake is noticed: ServerLink)."""
    s = cfg.server
    chan = Channel(
        "dealer",
        chunk_bytes=s.chunk_bytes,
        max_message_bytes=s.max_message_bytes,
        send_timeout_s=s.send_timeout_s,
        faults=injector(cfg, rank),
        curve=keys,
    )
    if keys is not None:
        chan.watch_handshakes()
    return chan


def _landing(cfg: ExperimentConfig, numel: int) -> torch.Tensor | None:
    """Where a reply's parameters land: None, straight in the host buffer; under a compressed downlink that
    buffer is the worker's tracked copy, which only the reply awaited may change, so they land aside first."""
    return None if cfg.server.downlink == "dense" else torch.empty(numel)


class WorkerError(RuntimeError):
    """The worker cannot go on; the message says why."""


class Stopped(Exception):
    """The server said Stop while the worker was joining again."""


class Cancelled(Exception):
    """The process hosting this worker asked it to stop (a signal, or another rank of it failed)."""


class WorkerLoop:
    def __init__(
        self,
        cfg: ExperimentConfig,
        rank: int,
        channel: Channel,
        task: Task | None = None,
        run_id: str = "",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        cancel: threading.Event | None = None,
    ):
        self.cfg, self.rank, self.chan = cfg, rank, channel
        self.clock, self.sleep = clock, sleep
        self.run_id = run_id
        self.cancel = cancel  # set by the hosting process: leave between steps or waits (raises Cancelled)
        self.task = task or Task(cfg, device=cfg.device_of(rank, torch.cuda.device_count()))
        net = self.task.net
        on_cpu = net.params.device.type == "cpu"
        # The wire needs host memory: on the CPU the model's own flat buffers travel; on a GPU,
        # pinned host mirrors do (one device<->host copy per step each way).
        self.host_params = net.params if on_cpu else torch.empty(net.numel, pin_memory=True)
        self.host_grad = net.grad if on_cpu else torch.empty(net.numel, pin_memory=True)
        comp = cfg.compression
        self.uplink = rank_uplink(cfg, rank, net)
        # dense pushes travel from host memory; compressors work on the device gradient
        self._push_source = self.host_grad if comp.method == "none" else net.grad
        self._host_copy = None if self._push_source is net.grad else self.host_grad  # what the step copies to
        self.version, self.seq = 0, 0
        self.copy_id = -1  # server.downlink topk: the id of the copy of the parameters held (worker/downlink.py)
        self._landing = _landing(cfg, net.numel)
        self.stats = WorkerReport()
        self.step = Stepper(cfg, rank, self.task, self.stats, clock, sleep)
        self.link = ServerLink(cfg, channel, self._alloc, self.stats, self._check_cancel, clock)
        self.shm = self._shm_params(on_cpu and comp.method == "none")
        self.rejoins = 0
        self._fallback = codec.fresh_allocator(cfg.server.max_message_bytes)
        self._rejects_in_a_row = self._nonfinite_in_a_row = self._clipped_in_a_row = 0
        size = net.buffer_layout.total
        self._buffers = torch.empty(size) if size else None  # host buffer the model's buffers are gathered into

    # -- main loop -----------------------------------------------------------------------------------
    def run(self) -> WorkerReport:
        if not self._join():
            return self.stats
        while True:
            self._check_cancel()
            self.shm.before_gradient()
            loss, samples = self.step.gradient(self._host_copy)
            if not self._finite_gradient(loss):
                continue  # nothing is pushed and no error-feedback state moves; the next batch may be fine
            kind, payload = self.uplink.prepare(self._push_source)
            self._note_clipping(payload.meta.get("clipped", 0))
            if self._push(kind, payload, loss, samples):
                return self.stats

    def _push(self, kind: str, payload: Payload, loss: float, samples: int) -> bool:
        """Push, wait for the answer and act on it; True when the server said Stop (ShardedLoop: any shard)."""
        push = self.shm.place(  # a dense push on the server's host: its values through the push slot
            Push(
                rank=self.rank,
                seq=self.seq,
                base_version=self.version,
                copy_id=self.copy_id,
                kind=kind,
                encoding=payload.encoding,
                numel=payload.numel,
                loss=loss,
                samples=samples,
                meta=self._meta(payload, kind),
                values=payload.values,
                indices=payload.indices,
                signs=payload.signs,
                shm=self.shm.active,
                buffers=self._buffers_due(),
            )
        )
        reply = self._exchange_push(push)
        self.stats.pushes += 1
        if isinstance(reply, Stop):
            self.stats.stop_reason = reply.reason
            self.uplink.resync()  # no verdict: mirrored state goes back to what it was before uplink.sent()
            return True
        try:
            self._handle(reply)
        except Stopped:  # told to stop while joining again
            return True
        return False

    def _buffers_due(self) -> torch.Tensor | None:
        """The model's buffers on the first push and every worker.buffers_every pushes after (None otherwise,
        and always for a model without buffers): the server serves their mean in snapshots."""
        every = self.cfg.worker.buffers_every
        if self._buffers is None or every == 0 or self.stats.pushes % every:
            return None
        return self.task.net.buffers(self._buffers)

    def _finite_gradient(self, loss: float) -> bool:
        """False (and counted) for a gradient with NaN or inf; fails after MAX_NONFINITE of them in a row."""
        if is_finite(self.task.net.grad):
            self._nonfinite_in_a_row = 0
            return True
        self.stats.skipped_nonfinite += 1
        self._nonfinite_in_a_row += 1
        log.warning("rank %d: the gradient has NaN or inf (loss %g); not pushed", self.rank, loss)
        if self._nonfinite_in_a_row >= MAX_NONFINITE:
            raise WorkerError(
                f"the gradient was NaN or inf {MAX_NONFINITE} times in a row (last loss {loss:g}): the model has "
                "diverged or the data holds NaN; try a lower optimizer.lr"
            )
        return False

    def _note_clipping(self, clipped: int) -> None:
        """Values beyond the wire dtype's range are clipped (error feedback keeps the rest); say so once when
        it persists, because then the dtype is too small for these values (float16 tops out at 65504)."""
        if not clipped:
            self._clipped_in_a_row = 0
            return
        self.stats.pushes_clipped += 1
        self._clipped_in_a_row += 1
        if self._clipped_in_a_row == CLIPPED_WARN_AFTER:
            log.warning(
                "rank %d: %d pushes in a row had values clipped to compression.values=%s's range; "
                "use float32 or bfloat16 values",
                self.rank,
                CLIPPED_WARN_AFTER,
                self.cfg.compression.values,
            )

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(f"rank {self.rank} was asked to stop")

    def _meta(self, payload: Payload, kind: str) -> dict:
        """Encoding metadata, plus now and then ||g_i||^2 so the server can check its mirror of g_i."""
        meta = dict(payload.meta)
        g = self.uplink.mirror()
        if g is not None and kind == "delta" and self.seq % self.cfg.compression.resync_every == 0:
            meta["g_sq"] = float(g.double().square().sum())
        return meta

    def _handle(self, reply: Message) -> None:
        if isinstance(reply, Reply):
            self._rejects_in_a_row = 0
            self.shm.answered(refused=False)
            self.seq += 1
            self.version = reply.version
            self.uplink.commit(reply.applied)
            if reply.applied:
                self.stats.applied += 1
            else:
                self.stats.dropped += 1
            if reply.params is None and reply.indices is None:  # shared memory: the reply named the version only
                self.version = self.shm.load(self.host_params, reply.version, self._pull)
            else:
                self.copy_id = self._take(reply, self.host_params, self.copy_id)
            self._load_params()
        elif isinstance(reply, Reject):
            self.uplink.commit(False)
            self.shm.answered(refused=True, code=reply.code)
            self.stats.rejected += 1
            self._rejects_in_a_row += 1
            if reply.expected_seq >= 0:
                self.seq = reply.expected_seq
            if reply.code == "bad_seq":
                self.uplink.resync()  # the server's copy of our state may differ: resend it densely
            log.warning("push %d rejected: %s: %s", reply.seq, reply.code, reply.message)
            if reply.code in REJOIN and self._rejects_in_a_row <= MAX_CONSECUTIVE_REJECTS:
                self._rejoin(reply)
            elif reply.code in ("bad_version", "bad_type", "bad_run") or (
                self._rejects_in_a_row >= MAX_CONSECUTIVE_REJECTS
            ):
                raise WorkerError(f"server rejected push {reply.seq}: {reply.code}: {reply.message}")
        else:
            raise WorkerError(f"unexpected {reply.TYPE} message in reply to a push")

    def _rejoin(self, reply: Reject) -> None:
        """The server does not know this connection (it restarted, or let this worker go as silent) or has no
        such version (a restart went back to a checkpoint): join again and go on from the parameters, version
        and sequence number it has. The error feedback starts again with a dense reset."""
        log.warning("rank %d joins again (%s: %s)", self.rank, reply.code, reply.message)
        self.rejoins += 1
        self.uplink.resync()
        if not self._join():
            raise Stopped(self.stats.stop_reason)

    # -- joining and messaging -----------------------------------------------------------------------
    def _hello(self) -> Hello:
        net = self.task.net
        return Hello(
            rank=self.rank,
            pid=os.getpid(),
            host=socket.gethostname(),
            device=str(net.params.device),
            run_id=self.run_id,
            uplink=self.uplink.uplink,
            signature=net.layout.signature(),
            buffer_signature=net.buffer_layout.signature(),
        )

    def _join(self) -> bool:
        net = self.task.net
        try:
            reply = self._exchange(self._hello(), timeout_s=self.cfg.server.connect_timeout_s)
        except TimeoutError:
            raise WorkerError(
                f"could not reach the parameter server at {self.chan.endpoint} within "
                f"{self.cfg.server.connect_timeout_s:.0f}s (is it running, and is the endpoint right?)"
            ) from None
        if isinstance(reply, Stop):
            self.stats.stop_reason = reply.reason
            return False
        if isinstance(reply, Reject):
            raise WorkerError(f"server refused rank {self.rank}: {reply.code}: {reply.message}")
        if not isinstance(reply, Welcome):
            raise WorkerError(f"expected a welcome, got {reply.TYPE}")
        if reply.layout != net.layout.to_wire():
            raise WorkerError("the server serves a different parameter layout than this worker's model")
        self.version, self.seq = reply.version, reply.next_seq
        self.copy_id = self._take(reply, self.host_params, self.copy_id)
        self._load_params()
        unusable = self.shm.attach(reply.settings, net.numel)
        if unusable:
            raise WorkerError(unusable)
        log.info(
            "rank %d joined at version %d (%d parameters on %s)", self.rank, self.version, net.numel, net.params.device
        )
        return True

    def _load_params(self) -> None:
        if self.host_params is not self.task.net.params:
            self.task.net.params.copy_(self.host_params, non_blocking=True)

    def _pull(self) -> int:
        """The parameters over ZeroMQ (into the host buffer, as every reply); their version."""
        reply = self._exchange(Pull(rank=self.rank))
        if isinstance(reply, Stop):
            self.stats.stop_reason = reply.reason
            raise Stopped(reply.reason)
        if isinstance(reply, Reject) and reply.code in REJOIN:  # the server restarted while this worker read
            self._rejoin(reply)  # the Welcome brings the new server's parameters and version
            return self.version
        if not isinstance(reply, Reply) or reply.params is None:
            raise WorkerError(f"expected parameters in answer to a pull, got {reply.TYPE}")
        self.copy_id = self._take(reply, self.host_params, self.copy_id)
        return reply.version

    def _exchange_push(self, push: Push) -> Message:
        """Send a push and wait for its answer; error feedback moves ahead while the server works on it
        (uplink.sent: commit keeps or undoes that)."""
        try:
            self.link.send(push)
            self.uplink.sent()
            return self.link.collect()
        except LinkError as err:
            raise WorkerError(str(err)) from None

    def _exchange(self, msg: Message, timeout_s: float | None = None) -> Message:
        try:
            return self.link.exchange(msg, timeout_s)
        except LinkError as err:
            raise WorkerError(str(err)) from None

    def _shm_params(self, dense_cpu: bool) -> ShmParams:
        """Same host as the server: the parameters from shared memory; and pushing a dense CPU gradient, that
        gradient computed straight into the push slot (its own buffer kept for when there is none)."""
        own = self.task.net.grad
        return ShmParams(
            self.cfg, self.rank, self.stats, bind_grad=(lambda b: self._grad_in(b, own)) if dense_cpu else None
        )

    def _grad_in(self, buf: torch.Tensor | None, own: torch.Tensor) -> None:
        """Where backward writes the gradient: `buf` (the push slot's values), or the worker's own buffer."""
        self.task.net.use_grad(buf if buf is not None else own)
        self.host_grad = self._push_source = self.task.net.grad

    def _take(self, msg: Reply | Welcome, dst: torch.Tensor, copy_id: int) -> int:
        """The parameters (or a downlink delta) a message carries, into `dst`; the copy id now held."""
        try:
            return downlink.take(msg, dst, copy_id)
        except ValueError as err:
            raise WorkerError(f"the server sent {err}") from None

    def _alloc(self, cls: type[Message], spec: codec.TensorSpec) -> torch.Tensor:
        """Parameters go straight into the (host) parameter buffer, or land aside under a compressed downlink:
        no allocation per reply."""
        if spec.name == "params":
            if spec.dtype != "float32" or spec.numel != self.host_params.numel():
                raise ProtocolError(
                    "bad_shape",
                    f"server sent {spec.numel} {spec.dtype} parameters, "
                    f"the model has {self.host_params.numel()} float32",
                )
            return self._receive_params()
        return self._fallback(cls, spec)

    def _receive_params(self) -> torch.Tensor:
        """The buffer a message's parameters are received into: the host parameters themselves, or under a
        compressed downlink the landing buffer (worker/downlink.py, land)."""
        return self.host_params if self._landing is None else self._landing
