"""The worker's side of the same-host shared-memory path (docs/design.md, Shared-memory parameters).

At every join the Welcome may name the server's segment; with server.transport auto or shm the worker opens
it when it is on this host and is the advertised one. From then on its pushes ask for the version only
(Push.shm), and after each such Reply it copies the parameters of that version (or a newer one: then that is
the version it computes on) out of the segment into its parameter buffer. A read that finds no consistent
version in a bounded number of tries falls back to a Pull, answered with the parameters over ZeroMQ.

Pushes (docs/design.md, Shared-memory pushes): when the Welcome also offers this rank a push slot, a dense
float32 push leaves its values there and travels as a header with values_in_shm. The slot is written only
while `clean`: no push of this worker was refused since its last Reply. A refused push may still have resent
copies queued at the server, which it would read after this worker wrote its next values; after a Reject the
pushes go over ZeroMQ until a Reply shows every earlier copy handled.

Gradient in the slot (docs/design.md, Shared-memory pushes): a worker whose dense pushes are its CPU model's
own flat gradient hands `bind_grad` here; while the slot is clean, the model's gradient buffer is the slot's
values, so backward() writes the push where the server reads it and a push only publishes its seq (no copy
of 4P bytes per push). The slot is invalidated before each gradient (`before_gradient`), and the gradient goes
back to the worker's own buffer whenever the slot is not clean or closes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from protocol.config.schema import ExperimentConfig
from protocol.runfolder.records import WorkerReport
from protocol.wire import shm
from protocol.wire.messages import Push

log = logging.getLogger("worker")


class ShmParams:
    def __init__(
        self,
        cfg: ExperimentConfig,
        rank: int,
        stats: WorkerReport,
        bind_grad: Callable[[torch.Tensor | None], None] | None = None,
    ):
        """bind_grad(buf): make buf the model's flat gradient (None: the worker's own buffer again); given when
        the pushes are that gradient itself (a CPU worker pushing dense float32)."""
        self.mode, self.rank, self.stats = cfg.server.transport, rank, stats
        self.reader: shm.SegmentReader | None = None
        self.slot: shm.PushSlotWriter | None = None
        self.clean = True  # no push refused since the last Reply: the slot may be written
        self.bind_grad = bind_grad
        self._bound: torch.Tensor | None = None  # the slot's values as the model's gradient, while they are

    @property
    def active(self) -> bool:
        return self.reader is not None

    def attach(self, settings: dict, numel: int) -> str | None:
        """Open the segment a Welcome's settings name (closing any earlier one: a restarted server has a new
        one). Returns why it cannot be used when server.transport is shm, else None (auto: ZeroMQ then)."""
        self.close()
        if self.mode == "zmq":
            return None
        try:
            if "shm" not in settings:
                raise shm.SegmentError("the server offers no shared-memory segment")
            self.reader = shm.SegmentReader(shm.Advert.from_wire(settings["shm"]), numel)
        except shm.SegmentError as err:
            if self.mode == "shm":
                return f"server.transport is shm, but {err}"
            log.info("rank %d: parameters over ZeroMQ (%s)", self.rank, err)
            return None
        log.info("rank %d: parameters from shared memory (/dev/shm/%s)", self.rank, self.reader.name)
        self._attach_slot(settings, numel)
        return None

    def _attach_slot(self, settings: dict, numel: int) -> None:
        """Open this rank's push slot when the Welcome offers one (else, or when it cannot: pushes over ZeroMQ)."""
        if "shm_push" not in settings:
            return
        try:
            self.slot = shm.PushSlotWriter(shm.Advert.from_wire(settings["shm_push"], self.rank), self.rank, numel)
        except shm.SegmentError as err:
            log.info("rank %d: pushes over ZeroMQ (%s)", self.rank, err)
            return
        log.info("rank %d: dense pushes through shared memory (/dev/shm/%s)", self.rank, self.slot.name)
        self._bind()

    def _bind(self) -> None:
        """The model's gradient into the slot's values while there is a clean slot, else back to its own buffer."""
        want = self.slot is not None and self.clean and self.bind_grad is not None
        if want and self._bound is None:
            assert self.slot is not None and self.bind_grad is not None
            self._bound = torch.from_numpy(self.slot.values)
            self.bind_grad(self._bound)
        elif not want and self._bound is not None:
            self._bound = None
            if self.bind_grad is not None:
                self.bind_grad(None)

    def before_gradient(self) -> None:
        """The gradient is about to be computed: a slot holding it names no push while it changes."""
        if self._bound is not None and self.slot is not None:
            self.slot.invalidate()

    def place(self, push: Push) -> Push:
        """Move a dense float32 push's values into the slot (when there is one and it is clean): the push then
        says values_in_shm and carries no values frame. Other pushes are returned as they are."""
        values = push.values
        if self.slot is None or not self.clean or push.encoding != "dense" or values is None:
            return push
        if values.dtype != torch.float32 or values.device.type != "cpu" or values.numel() != self.slot.numel:
            return push
        if self._bound is not None and values.data_ptr() == self._bound.data_ptr():
            self.slot.publish(push.seq)  # computed in the slot: nothing to copy
            self.stats.pushes_computed_in_slot += 1
        else:
            self.slot.write(push.seq, values.detach().numpy())
        push.values, push.values_in_shm = None, True
        self.stats.pushes_via_shm += 1
        return push

    def answered(self, refused: bool, code: str = "") -> None:
        """The answer to a push came: a Reply (refused False) makes the slot writable again, a Reject not (and
        a server that says the rank has no slot is not sent slot pushes again until the next join)."""
        self.clean = not refused
        if code == "no_shm_slot":
            self._close_slot()
        self._bind()

    def load(self, params: torch.Tensor, version: int, pull: Callable[[], int]) -> int:
        """Copy the parameters of `version` or newer into `params` (host memory); the version copied. Without a
        consistent read in the bounded tries, `pull()` fetches them over ZeroMQ and returns their version."""
        got = self.reader.read_into(params.detach().numpy(), version) if self.reader is not None else None
        if got is not None:
            self.stats.params_from_shm += 1
            return got
        self.stats.shm_fallbacks += 1
        log.warning("rank %d: no consistent version >= %d in shared memory; pulling over ZeroMQ", self.rank, version)
        return pull()

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        self._close_slot()

    def _close_slot(self) -> None:
        slot, self.slot = self.slot, None
        self._bind()  # the gradient moves back before the mapping goes
        if slot is not None:
            slot.close()
