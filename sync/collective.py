"""How the synchronous baseline combines one step's gradients over torch.distributed (gloo or nccl).

Every rank calls `combine` once per step with its own gradient; every rank gets back the same
direction (bitwise: all ranks decode the same bytes with the same operations in the same order), the
losses of all ranks, the bytes moved, and whether the run stops after this step. The stop requests
ride in the step's own collective, so a rank can never wait for a peer that has already left.

DenseAllReduce (compression.method none): one all-reduce (sum) of the float32 buffer
    [gradient (numel) | one loss slot per rank | one stop slot per rank]; direction = sum / N.
GatheredPushes (naive, ef14, ef21, ef21-sgdm, ef21-sgd2m): each rank's uplink makes the same Push an
    async worker would send; it is packed into bytes (protocol/wire/packed.py). All-gather 1: every
    rank's (bytes, header bytes, stop request); all-gather 2: the packed pushes, padded to the
    longest. Every rank feeds every push, in rank order, through the server's own aggregator
    (ps/aggregate.py, apply_every = N): naive and ef14 steps on the mean of the decoded pushes; the EF21
    family starts from the exact mean of the dense resets and then adds c_i / N for every rank.
Tensors handed to nccl live on the rank's GPU; decoding happens on the host (protocol.wire.encoding).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist

from protocol.config.schema import ExperimentConfig
from protocol.wire.encoding import VALUE_DTYPES, narrow
from protocol.wire.messages import Push
from protocol.wire.packed import pack, unpack
from ps.aggregate import make_aggregator
from worker.ef import Uplink

STOP_REASONS = ("", "max_updates", "max_seconds", "terminated", "interrupted")  # code = index


@dataclass
class Round:
    """One step's outcome, the same on every rank."""

    direction: torch.Tensor  # float32 (numel,) on the model's device; valid until the next combine
    losses: list[float]  # per rank
    sent: list[int]  # per rank: bytes of its contribution (the push, as it would cross a socket)
    received: int  # bytes this rank received from the step's collectives (every rank receives as many)
    stop_reason: str  # "" = go on; else the reason of the lowest rank that asked to stop


class Combiner(Protocol):
    """Turns every rank's gradient of one step into the same direction on every rank (DenseAllReduce for
    compression.method none, else GatheredPushes)."""

    def combine(self, grad: torch.Tensor, loss: float, samples: int, step: int, stop_code: int) -> Round:
        """This rank's gradient, loss and stop request (a STOP_REASONS code, 0: go on) in; the step's Round out."""
        ...


def first_stop(codes: list[int]) -> str:
    return next((STOP_REASONS[c] if 0 < c < len(STOP_REASONS) else "stopped" for c in codes if c), "")


class Collective:
    """The group's collectives on this rank's communication device, with the time spent in them."""

    def __init__(self, world: int, device: torch.device):
        self.world = world
        self.device = device  # cpu for gloo, the rank's GPU for nccl
        self.seconds = 0.0
        self._gather_out: dict[torch.dtype, torch.Tensor] = {}  # reused: no fresh pages every step

    def all_reduce_sum(self, buf: torch.Tensor) -> None:
        t0 = time.perf_counter()
        dist.all_reduce(buf)
        self._wait()
        self.seconds += time.perf_counter() - t0

    def all_gather(self, local: torch.Tensor) -> torch.Tensor:
        """[world, len] on the host: every rank's `local` (same length and dtype on every rank).

        On the CPU the result is a view of a reused buffer, valid until the next all_gather of that dtype.
        """
        n = local.numel()
        out = room(self._gather_out.get(local.dtype), self.world * n, local.dtype, self.device)
        self._gather_out[local.dtype] = out
        rows = out[: self.world * n].view(self.world, n)
        src = local.to(self.device)
        t0 = time.perf_counter()
        dist.all_gather(list(rows.unbind(0)), src)
        self._wait()
        self.seconds += time.perf_counter() - t0
        return rows.cpu()

    def _wait(self) -> None:
        """nccl returns once the collective is queued on the GPU: wait, so the time counts as communication."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def room(buf: torch.Tensor | None, n: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """`buf` if it holds at least n elements, else a new buffer of n."""
    if buf is not None and buf.numel() >= n:
        return buf
    return torch.empty(max(n, 1), dtype=dtype, device=device)


class DenseAllReduce:
    def __init__(self, cfg: ExperimentConfig, rank: int, numel: int, comm: Collective):
        self.rank, self.numel, self.comm = rank, numel, comm
        self.world = comm.world
        self.value_dtype = VALUE_DTYPES[cfg.compression.values]
        self.buf = torch.zeros(numel + 2 * self.world, dtype=torch.float32, device=comm.device)

    def combine(self, grad: torch.Tensor, loss: float, samples: int, step: int, stop_code: int) -> Round:
        n, world = self.numel, self.world
        # compression.values rounds the gradient as an async dense push would (decode(encode(grad)))
        self.buf[:n].copy_(
            grad if self.value_dtype == torch.float32 else narrow(grad, torch.empty_like(grad, dtype=self.value_dtype))
        )
        self.buf[n:].zero_()
        self.buf[n + self.rank] = loss
        self.buf[n + world + self.rank] = stop_code
        self.comm.all_reduce_sum(self.buf)
        tail = self.buf[n:].tolist()  # one small device -> host copy
        direction = self.buf[:n].div_(world)
        nbytes = self.buf.numel() * self.buf.element_size()
        return Round(direction, tail[:world], [nbytes] * world, nbytes, first_stop([int(c) for c in tail[world:]]))


class GatheredPushes:
    """Compressed pushes: every rank gathers every rank's packed Push and feeds them, in rank order, through
    the server's own aggregation code (ps/aggregate.py), so both modes combine the same pushes alike."""

    def __init__(
        self, cfg: ExperimentConfig, rank: int, numel: int, comm: Collective, uplink: Uplink, device: torch.device
    ):
        self.rank, self.numel, self.comm, self.uplink = rank, numel, comm, uplink
        self.world = comm.world
        comp = cfg.compression
        # one group of `world` pushes makes one step: the mean of the decoded pushes, or EF21's g
        self.agg = make_aggregator(comp.ef21, numel, comp.resync_every, every=self.world)
        self.direction = torch.zeros(numel, dtype=torch.float32, device=device)
        self._send: torch.Tensor | None = None  # reused; the first step (a dense reset for EF21) sizes it

    def combine(self, grad: torch.Tensor, loss: float, samples: int, step: int, stop_code: int) -> Round:
        kind, p = self.uplink.prepare(grad)
        push = Push(
            rank=self.rank,
            seq=step,
            base_version=step,
            kind=kind,
            encoding=p.encoding,
            numel=p.numel,
            loss=loss,
            samples=samples,
            meta=dict(p.meta),
            values=p.values,
            indices=p.indices,
            signs=p.signs,
        )
        sizes, gathered = self._gather(push, stop_code)
        pushes = [self._unpack(gathered[i, : int(sizes[i, 0])], int(sizes[i, 1])) for i in range(self.world)]
        self.direction.copy_(self._combine(pushes))
        self.uplink.commit(True)  # every push of a sync step is applied
        received = sizes.numel() * sizes.element_size() + gathered.numel()
        return Round(
            self.direction, [q.loss for q in pushes], sizes[:, 0].tolist(), received, first_stop(sizes[:, 2].tolist())
        )

    def _gather(self, push: Push, stop_code: int) -> tuple[torch.Tensor, torch.Tensor]:
        """All-gather 1: every rank's (bytes, header bytes, stop request); all-gather 2: the packed pushes,
        padded to the longest (the bytes past a push's own are ignored)."""
        packed, header_len = pack(push, self._send)
        sizes = self.comm.all_gather(torch.tensor([packed.numel(), header_len, stop_code], dtype=torch.int64))
        sizes = sizes.clone()  # the next all_gather of int64 would reuse its buffer
        longest = int(sizes[:, 0].max())
        send = room(self._send, longest, torch.uint8)
        if send.data_ptr() != packed.data_ptr():
            send[: packed.numel()] = packed
        self._send = send
        return sizes, self.comm.all_gather(send[:longest])

    @staticmethod
    def _unpack(buf: torch.Tensor, header_len: int) -> Push:
        push = unpack(buf, header_len)
        assert isinstance(push, Push)  # every rank packs a Push (combine)
        return push

    def _combine(self, pushes: list[Push]) -> torch.Tensor:
        direction = None
        for rank, push in enumerate(pushes):  # rank order, the server's arithmetic
            direction = self.agg.apply(rank, self.agg.stage(push))
        if direction is None:
            raise RuntimeError(f"{self.world} pushes did not complete one step")
        return direction


def make_combiner(
    cfg: ExperimentConfig, rank: int, numel: int, comm: Collective, uplink: Uplink, device: torch.device
) -> Combiner:
    if cfg.compression.method == "none":
        return DenseAllReduce(cfg, rank, numel, comm)
    return GatheredPushes(cfg, rank, numel, comm, uplink, device)
