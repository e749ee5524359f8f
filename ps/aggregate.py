"""Turns pushes into the optimizer's direction. Pure math, no I/O.

Two phases, so that a push the staleness policy drops changes nothing:
    staged = agg.stage(push)              # validate + decode; raises ProtocolError; no state changes
    direction = agg.apply(rank, staged)   # only for pushes that are applied

With apply_every = k, apply() returns None for the first k-1 applied pushes of a group and the
direction of the group on the k-th: the average of the k decoded pushes (direct), or g after all k
deltas (EF21, whose g is already a mean over workers).

DirectAggregator (uplink "grad": methods none, naive, ef14): the decoded push is the direction
(APAM: every arriving gradient is one iteration).

EF21Aggregator (uplink "ef21": ef21, ef21-sgdm, ef21-sgd2m): keeps every worker's g_i and the mean g
over workers that have joined. A "reset" push sets g_i densely (a worker's first push, or a resync);
a "delta" push adds c to g_i and c/n to g. Every `resync_every` applied pushes g is recomputed
exactly from the g_i, and the relative difference found is the float drift (docs/algorithms.md, Lock-step and
drift). Workers
may send ||g_i||^2 (meta "g_sq", computed before this push) so the server can check that its copy
of g_i matches the worker's own (docs/algorithms.md, Lock-step and drift); the largest relative mismatch is drift too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from protocol.errors import ProtocolError
from protocol.wire.encoding import Payload, decode_into, decode_sparse
from protocol.wire.messages import Push


def payload_of(push: Push) -> Payload:
    return Payload(push.encoding, push.numel, push.values, push.indices, push.signs, push.meta)


@dataclass
class Staged:
    kind: str
    dense: torch.Tensor | None = None  # float32 (numel,)
    indices: torch.Tensor | None = None  # int64 (k,), sparse deltas
    values: torch.Tensor | None = None  # float32 (k,)


class Aggregator(Protocol):
    """Turns staged pushes into the optimizer's direction (the server and the sync baseline both use one)."""

    uplink: str  # the push kind workers must send: "grad" or "ef21"
    drift_max: float  # largest relative float drift of the EF21 mirror found so far (0 for direct pushes)

    def stage(self, push: Push) -> Staged:
        """Validate and decode; raises ProtocolError; changes no state."""
        ...

    def apply(self, rank: int, staged: Staged) -> torch.Tensor | None:
        """Fold a staged push in; the direction when a group of apply_every pushes is complete, else None."""
        ...

    def recompute(self, measure: bool = True) -> float:
        """Recompute any running mean exactly; returns the drift it removed."""
        ...

    def drop(self, rank: int) -> None:
        """A worker left the run (evicted): its share of the direction goes with it."""
        ...

    def set_group(self, size: int) -> torch.Tensor | None:
        """Steps need `size` pushes from now on (fewer live workers); the direction if the group is already full."""
        ...

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, JSON facts) that restore this aggregator exactly (a checkpoint)."""
        ...

    def load_state(self, tensors: dict[str, torch.Tensor], facts: dict) -> None: ...

    def settle(self) -> None:
        """Finish work apply() left for later (EF21: a sparse delta's add into g_i, which no step needs): the
        server calls it once the reply is sent; every other method settles first anyway."""
        ...


class DecodeScratch:
    """The dense float32 buffer direct pushes are decoded into.

    Sparse pushes (naive, ef14) are scattered into a buffer kept zero elsewhere: only the k positions
    the previous sparse push wrote are re-zeroed, not all d (after any other encoding, all d are).
    """

    def __init__(self, numel: int):
        self.buf = torch.zeros(numel, dtype=torch.float32)
        self._written: torch.Tensor | None = None  # positions the last sparse decode wrote
        self._all_written = False  # the last other decode may have written anywhere

    def decode(self, p: Payload) -> torch.Tensor:
        if p.encoding != "sparse":
            self._all_written = True  # even if it fails half way: the next sparse push zeroes everything
            return decode_into(p, self.buf.numel(), self.buf, bounded=True)
        idx, vals = decode_sparse(p, self.buf.numel(), bounded=True)  # validates before anything is written
        if self._all_written:
            self.buf.zero_()
            self._all_written = False
        elif self._written is not None:
            self.buf.index_fill_(0, self._written, 0.0)
        self._written = idx
        return self.buf.index_copy_(0, idx, vals)


class DirectAggregator:
    uplink = "grad"

    def __init__(self, numel: int, every: int = 1):
        self.numel = numel
        self.every = every
        self.drift_max = 0.0
        self._scratch = DecodeScratch(numel)
        self._sum = torch.zeros(numel, dtype=torch.float32) if every > 1 else None
        self._count = 0

    def stage(self, push: Push) -> Staged:
        if push.kind != "grad":
            raise ProtocolError("bad_encoding", f"this server takes 'grad' pushes, got kind {push.kind!r}")
        return Staged("grad", dense=self._scratch.decode(payload_of(push)))

    def apply(self, rank: int, staged: Staged) -> torch.Tensor | None:
        assert staged.dense is not None
        if self._sum is None:
            return staged.dense
        if self._count == 0:
            self._sum.zero_()
        self._sum.add_(staged.dense)
        self._count += 1
        return self._complete()

    def _complete(self) -> torch.Tensor | None:
        if self._sum is None or self._count < self.every:
            return None
        count, self._count = self._count, 0
        return self._sum.div_(count)

    def recompute(self, measure: bool = True) -> float:
        return 0.0  # nothing is kept between pushes, so nothing can drift

    def drop(self, rank: int) -> None:
        """Nothing of a departed worker is kept (a push it made to the open group stays in it)."""

    def set_group(self, size: int) -> torch.Tensor | None:
        self.every = max(1, size)
        return self._complete() if self._count else None

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {"sum": self._sum} if self._sum is not None else {}
        return tensors, {"count": self._count, "every": self.every}

    def settle(self) -> None:
        """Nothing is left for later."""

    def load_state(self, tensors: dict[str, torch.Tensor], facts: dict) -> None:
        if self._sum is not None:
            self._sum.copy_(tensors["sum"])
        self._count, self.every = int(facts["count"]), int(facts["every"])


class EF21Aggregator:
    uplink = "ef21"

    def __init__(self, numel: int, resync_every: int, every: int = 1):
        self.numel = numel
        self.every = every
        self.resync_every = resync_every
        self._g_i: dict[int, torch.Tensor] = {}
        self._owed: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (rank, indices, values) for g_i
        self.g = torch.zeros(numel, dtype=torch.float32)
        self.drift_max = 0.0
        self.applied = 0
        self._count = 0  # pushes in the open group (apply_every)
        self._scratch = torch.empty(numel, dtype=torch.float32)

    @property
    def g_i(self) -> dict[int, torch.Tensor]:
        """Every worker's g_i by rank (float32 (numel,) each), with any delta apply() left owed added in."""
        self.settle()
        return self._g_i

    def settle(self) -> None:
        """Add the sparse delta apply() owes to its worker's g_i (the same index_add_, later: no step reads g_i)."""
        owed, self._owed = self._owed, None
        if owed is not None:
            rank, idx, vals = owed
            self._g_i[rank].index_add_(0, idx, vals)

    def stage(self, push: Push) -> Staged:
        p = payload_of(push)
        if push.kind == "reset":
            if p.encoding != "dense":
                raise ProtocolError("bad_encoding", "a reset push must be dense")
            return Staged("reset", dense=decode_into(p, self.numel, self._scratch, bounded=True))
        if push.kind != "delta":
            raise ProtocolError("bad_encoding", f"this server takes 'delta' or 'reset' pushes, got {push.kind!r}")
        if push.rank not in self.g_i:
            raise ProtocolError("bad_seq", f"rank {push.rank} must send a dense reset before deltas")
        self._check_mirror(push)
        if p.encoding == "sparse":
            idx, vals = decode_sparse(p, self.numel, bounded=True)
            return Staged("delta", indices=idx, values=vals)
        return Staged("delta", dense=decode_into(p, self.numel, self._scratch, bounded=True))

    def apply(self, rank: int, staged: Staged) -> torch.Tensor | None:
        if staged.kind == "reset":
            assert staged.dense is not None  # stage() decodes every reset densely
            self._reset(rank, staged.dense)
        else:
            self._add_delta(rank, staged)
        self.applied += 1
        self._count += 1
        if self.applied % self.resync_every == 0:
            self.recompute()
        return self._complete()

    def _add_delta(self, rank: int, staged: Staged) -> None:
        """g_i += c and g += c/n, from a sparse (indices, values) or a dense decoded delta. A sparse delta's
        g_i share is owed until settle() (after the reply): its own copies, as staged tensors may alias
        receive buffers."""
        g_i, inv_n = self.g_i[rank], 1.0 / len(self.g_i)
        if staged.indices is not None:
            assert staged.values is not None  # stage() decodes a sparse delta into both
            self.g.index_add_(0, staged.indices, staged.values, alpha=inv_n)
            self._owed = (rank, staged.indices.clone(), staged.values.clone())
        else:
            assert staged.dense is not None  # any other delta is decoded densely
            g_i.add_(staged.dense)
            self.g.add_(staged.dense, alpha=inv_n)

    def _complete(self) -> torch.Tensor | None:
        if self._count < self.every:
            return None
        self._count = 0
        return self.g

    def drop(self, rank: int) -> None:
        """A departed worker's g_i is dropped and g renormalised over the workers left: its estimate of its
        own gradient would go on aging while x moves, a bias EF21 never corrects (docs/algorithms.md, EF21)."""
        if self.g_i.pop(rank, None) is not None and self.g_i:
            self.recompute(measure=False)
        elif not self.g_i:
            self.g.zero_()

    def set_group(self, size: int) -> torch.Tensor | None:
        self.every = max(1, size)
        return self._complete() if self._count else None

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {"g": self.g, **{f"g_i/{r}": t for r, t in self.g_i.items()}}
        facts = {"applied": self.applied, "count": self._count, "every": self.every, "drift_max": self.drift_max}
        return tensors, facts

    def load_state(self, tensors: dict[str, torch.Tensor], facts: dict) -> None:
        self.g.copy_(tensors["g"])
        self._owed = None
        self._g_i = {int(k.removeprefix("g_i/")): t.clone() for k, t in tensors.items() if k.startswith("g_i/")}
        self.applied, self._count, self.every = int(facts["applied"]), int(facts["count"]), int(facts["every"])
        self.drift_max = float(facts["drift_max"])

    def _reset(self, rank: int, dense: torch.Tensor) -> None:
        if rank in self.g_i:
            g_i = self.g_i[rank]
            self.g.add_(dense, alpha=1.0 / len(self.g_i)).sub_(g_i, alpha=1.0 / len(self.g_i))
            g_i.copy_(dense)
        else:  # a new worker changes n: recompute the mean exactly (a change of n, not drift)
            self.g_i[rank] = dense.clone()
            self.recompute(measure=False)

    def recompute(self, measure: bool = True) -> float:
        """g = mean of the g_i, exactly (in float64 accumulation); returns the drift it removed."""
        exact = torch.zeros(self.numel, dtype=torch.float64)
        for g_i in self.g_i.values():  # a loop over workers, not parameters
            exact.add_(g_i)
        exact.div_(len(self.g_i))
        norm = float(exact.norm())
        drift = float((self.g.double() - exact).norm()) / norm if norm > 0 else 0.0
        self.g.copy_(exact)
        if measure:
            self.drift_max = max(self.drift_max, drift)
        return drift

    def _check_mirror(self, push: Push) -> None:
        g_sq = push.meta.get("g_sq")
        if isinstance(g_sq, float):
            ours = float(self.g_i[push.rank].double().square().sum())
            rel = abs(ours - g_sq) / max(abs(g_sq), 1e-30)
            self.drift_max = max(self.drift_max, rel)


def make_aggregator(ef21: bool, numel: int, resync_every: int, every: int = 1) -> Aggregator:
    return EF21Aggregator(numel, resync_every, every) if ef21 else DirectAggregator(numel, every)
