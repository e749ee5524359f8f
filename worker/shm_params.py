"""The worker's side of the same-host shared-memory path (docs/design.md, Shared-memory parameters).

At every join the Welcome may name the server's segment; with server.transport auto or shm the worker opens
it when it is on this host and is the advertised one. From then on its pushes ask for the version only
(Push.shm), and after each such Reply it copies the parameters of that version (or a newer one: then that is
the version it computes on) out of the segment into its parameter buffer. A read that finds no consistent
version in a bounded number of tries falls back to a Pull, answered with the parameters over ZeroMQ.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from protocol.config.schema import ExperimentConfig
from protocol.runfolder.records import WorkerReport
from protocol.wire import shm

log = logging.getLogger("worker")


class ShmParams:
    def __init__(self, cfg: ExperimentConfig, rank: int, stats: WorkerReport):
        self.mode, self.rank, self.stats = cfg.server.transport, rank, stats
        self.reader: shm.SegmentReader | None = None

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
        return None

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
