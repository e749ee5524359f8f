"""The server's side of the same-host shared-memory path (docs/design.md, Shared-memory parameters).

The segment (protocol/wire/shm.py) is created when the first worker is welcomed, and its name goes into
every Welcome's settings. A push that asks for it (Push.shm) is answered with a Reply that carries only the
version: before that reply goes out, the parameters of that version are published into the segment (once
per version, however many replies name it) or, for a push that steps, begun there and streamed in while the
step is taken (begin, write, end: docs/design.md, Streamed steps), so a worker that reads the segment after
its reply arrived finds that version, whole or on its way, or a newer one. Pulls, Welcomes and every
worker that did not ask get the parameters over ZeroMQ as before. Closed (unlinked) when the server ends;
the launcher removes what a killed server left.

Push slots (docs/design.md, Shared-memory pushes): while the segment exists, each rank's Welcome also offers
that rank a push slot (created the first time the rank is welcomed; settings["shm_push"]), and a push that
says values_in_shm is staged from a view of the slot instead of a values frame. Closed with the segment.
"""

from __future__ import annotations

import logging

import torch

from protocol.config.schema import ExperimentConfig
from protocol.errors import ProtocolError
from protocol.wire import shm
from protocol.wire.messages import Push

log = logging.getLogger("ps")


class SharedParams:
    def __init__(self, cfg: ExperimentConfig, run_id: str, numel: int):
        # the artificial delay answers with older versions than the newest: only the wire can carry those
        # shards: each serves a range, and the sharded worker assembles the ranges from every shard's reply
        self.wanted = cfg.server.transport != "zmq" and cfg.staleness.delay == "none" and cfg.server.shards == 1
        self.run_id, self.numel = run_id, numel
        self.writer: shm.SegmentWriter | None = None
        self.replies = 0  # replies that carried only the version
        self.slots: dict[int, shm.PushSlot | None] = {}  # per rank: its push slot (None: it could not be made)
        self._holders: dict[int, bytes] = {}  # per rank: the connection its slot was made for
        self.slot_pushes = 0  # pushes whose values were read from a slot

    @property
    def active(self) -> bool:
        return self.writer is not None

    def advert(self) -> dict:
        """What the Welcome's settings say of the segment ({} when there is none); creates it the first time."""
        if self.wanted and self.writer is None:
            self._create()
        return {"shm": self.writer.advert().to_wire()} if self.writer is not None else {}

    def push_advert(self, rank: int, identity: bytes = b"") -> dict:
        """What rank's Welcome says of its push slot ({} without a segment, or when the slot cannot be made).
        Each connection that holds the rank gets a slot of its own: one that takes a rank over from an earlier
        holder (evicted as silent, but alive) gets a new slot and the old one is unlinked, so the earlier
        holder, which keeps its mapping and may still write, never writes into the slot the server reads."""
        if self.writer is None:
            return {}
        if rank not in self.slots or self._holders.get(rank) != identity:
            old = self.slots.pop(rank, None)
            if old is not None:
                old.close()
            self.slots[rank], self._holders[rank] = self._create_slot(rank), identity
        slot = self.slots[rank]
        return {"shm_push": slot.advert().to_wire()} if slot is not None else {}

    def _create_slot(self, rank: int) -> shm.PushSlot | None:
        try:
            slot = shm.PushSlot(self.run_id, rank, self.numel)
        except OSError as err:
            log.warning("cannot create rank %d's push slot (%s): its pushes go over ZeroMQ", rank, err)
            return None
        log.info("rank %d may push through /dev/shm/%s", rank, slot.name)
        return slot

    def push_values(self, push: Push) -> torch.Tensor:
        """The float32 (numel,) values of a push that says values_in_shm: a view of its rank's slot (no copy;
        valid until the rank's worker gets its answer). Raises ProtocolError: no_shm_slot (this server offered
        the rank none), bad_field (a values frame too, or not a dense push), stale_slot (the slot holds no values
        of this push)."""
        slot = self.slots.get(push.rank)
        if slot is None:
            raise ProtocolError("no_shm_slot", f"rank {push.rank} has no push slot on this server; send the values")
        if push.values is not None or push.encoding != "dense":
            raise ProtocolError("bad_field", "a push with values_in_shm is dense and carries no values frame")
        values = slot.values(push.seq)
        if values is None:
            raise ProtocolError("stale_slot", f"rank {push.rank}'s push slot does not hold push {push.seq}")
        self.slot_pushes += 1
        return torch.from_numpy(values)

    def _create(self) -> None:
        self.wanted = False  # one attempt: a host without /dev/shm stays on ZeroMQ
        if not shm.supported():
            log.info("no shared-memory parameters on this host (x86-64 with a writable /dev/shm only)")
            return
        shm.remove_segments(self.run_id, only_dead=True)  # what a killed server of this run left
        try:
            self.writer = shm.SegmentWriter(self.run_id, self.numel)
        except OSError as err:
            log.warning("cannot create the shared-memory segment (%s): parameters go over ZeroMQ", err)
            return
        log.info("parameters for workers on this host in /dev/shm/%s", self.writer.name)

    def publish(self, version: int, params: torch.Tensor) -> bool:
        """Make `version` readable in the segment (if it is not yet, nor being streamed); False when there is
        no segment."""
        if self.writer is None:
            return False
        if version not in (self.writer.published, self.writer.writing):
            self.writer.publish(version, params.detach().numpy())
        self.replies += 1
        return True

    def begin(self, version: int) -> bool:
        """Start streaming `version` (write, then end); False when there is no segment."""
        if self.writer is None:
            return False
        self.writer.begin(version)
        return True

    def write(self, chunk: torch.Tensor) -> None:
        """The next parameters of the version begun (float32, contiguous, CPU)."""
        assert self.writer is not None
        self.writer.write(chunk.detach().numpy())

    def end(self) -> None:
        assert self.writer is not None
        self.writer.end()

    def close(self) -> None:
        for slot in self.slots.values():
            if slot is not None:
                slot.close()
        self.slots.clear()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
