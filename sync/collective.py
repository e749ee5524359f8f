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
    longest. Every rank decodes every push and combines them in rank order as the server would:
        naive, ef14   direction = mean_i decode(c_i)
        EF21 family   first step: every push is a dense reset, g = mean_i g_i (float64 accumulation,
                      as the server's recompute); then g += decode(c_i) / N for i = 0..N-1
Tensors handed to nccl live on the rank's GPU; decoding happens on the host (protocol.wire.encoding).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from protocol.config.schema import ExperimentConfig
from protocol.wire.encoding import VALUE_DTYPES, Payload, decode_into, narrow
from protocol.wire.messages import Push
from protocol.wire.packed import pack, unpack
from worker.ef import add_payload

STOP_REASONS = ("", "max_updates", "max_seconds", "terminated", "interrupted")  # code = index


@dataclass
class Round:
    """One step's outcome, the same on every rank."""

    direction: torch.Tensor  # float32 (numel,) on the model's device; valid until the next combine
    losses: list[float]  # per rank
    sent: list[int]  # per rank: bytes of its contribution (the push, as it would cross a socket)
    received: int  # bytes this rank received from the step's collectives (every rank receives as many)
    stop_reason: str  # "" = go on; else the reason of the lowest rank that asked to stop


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
    def __init__(self, cfg: ExperimentConfig, rank: int, numel: int, comm: Collective, uplink, device):
        self.rank, self.numel, self.comm, self.uplink = rank, numel, comm, uplink
        self.world = comm.world
        self.ef21 = cfg.compression.ef21
        self.direction = torch.zeros(numel, dtype=torch.float32, device=device)  # g for the EF21 family
        self._scratch = torch.empty(numel, dtype=torch.float32)  # host, for decoding
        self._send: torch.Tensor | None = None  # reused; the first step (a dense reset for EF21) sizes it
        self._started = False

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
        packed, header_len = pack(push, self._send)
        sizes = self.comm.all_gather(torch.tensor([packed.numel(), header_len, stop_code], dtype=torch.int64))
        sizes = sizes.clone()  # the next all_gather of int64 would reuse its buffer
        longest = int(sizes[:, 0].max())
        send = room(self._send, longest, torch.uint8)  # pad to the longest: the bytes past ours are ignored
        if send.data_ptr() != packed.data_ptr():
            send[: packed.numel()] = packed
        self._send = send
        gathered = self.comm.all_gather(send[:longest])
        pushes = [unpack(gathered[i, : int(sizes[i, 0])], int(sizes[i, 1])) for i in range(self.world)]
        direction = self._combine(pushes)
        self.uplink.commit(True)  # every push of a sync step is applied
        received = sizes.numel() * sizes.element_size() + gathered.numel()
        return Round(
            direction, [q.loss for q in pushes], sizes[:, 0].tolist(), received, first_stop(sizes[:, 2].tolist())
        )

    def _combine(self, pushes: list[Push]) -> torch.Tensor:
        payloads = [Payload(q.encoding, q.numel, q.values, q.indices, q.signs, q.meta) for q in pushes]
        kinds = {q.kind for q in pushes}
        inv_n = 1.0 / self.world
        if not self.ef21:
            self.direction.zero_()
        elif not self._started:  # every rank's first push is its dense g_i: g = the exact mean
            if kinds != {"reset"}:
                raise RuntimeError(f"the first EF21 step must be dense resets from every rank, got {sorted(kinds)}")
            exact = torch.zeros(self.numel, dtype=torch.float64)
            for p in payloads:
                exact.add_(decode_into(p, self.numel, self._scratch))
            self.direction.copy_(exact.div_(self.world))
            self._started = True
            return self.direction
        elif kinds != {"delta"}:
            raise RuntimeError(f"after the first step EF21 pushes are deltas, got {sorted(kinds)}")
        for p in payloads:  # rank order, the server's arithmetic (g += c_i / n)
            add_payload(self.direction, p, self._scratch, alpha=inv_n)
        return self.direction


def make_combiner(cfg: ExperimentConfig, rank: int, numel: int, comm: Collective, uplink, device: torch.device):
    if cfg.compression.method == "none":
        return DenseAllReduce(cfg, rank, numel, comm)
    return GatheredPushes(cfg, rank, numel, comm, uplink, device)
