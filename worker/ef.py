"""The worker half of error feedback (docs/algorithms.md, Error feedback). Pure math: no sockets, clocks or logging.

Two-phase, so state that mirrors the server's only moves when the server moved:
    kind, payload = ef.prepare(grad)     # what to push
    ef.commit(applied)                   # the server's verdict on it

Methods (chosen by compression.method):
    none        push the dense gradient (the APAM baseline)
    naive       push C(grad), no feedback (a negative control: biased C can stall or diverge)
    ef14        u = e + grad ; push C(u) ; e = u - C(u)                  (Seide et al. 2014, no step inside)
    ef21        push c = C(grad - g_i) ; g_i += c                       (Richtarik et al. 2021)
    ef21-sgdm   v = (1-eta) v + eta grad ; push c = C(v - g_i) ; g_i += c   (Fatkhullin et al. 2023)
    ef21-sgd2m  v as above ; u = (1-eta) u + eta v ; push c = C(u - g_i) ; g_i += c
EF21-family workers start (and resynchronise) with a dense "reset" push g_i = grad (v = u = g_i), as
the authors' codes do; the server then keeps g_i in lock-step. Every update of g_i uses the decoded
payload -- exactly what crossed the socket -- never the pre-quantisation values.
"""

from __future__ import annotations

from typing import Protocol

import torch

from protocol.config.schema import CompressionConfig
from protocol.wire.encoding import Payload, decode_into, decode_sparse, encode_dense
from worker.compressors import PayloadCompressor


class Uplink(Protocol):
    """A worker's half of one compression.method: what each push carries, and the state that mirrors the
    server's (the asynchronous worker, worker/loop.py, and the sync baseline, sync/collective.py, drive one)."""

    uplink: str  # how the server aggregates the pushes: "grad" (the push is the direction) or "ef21"

    def prepare(self, grad: torch.Tensor) -> tuple[str, Payload]:
        """(push kind, payload) for this gradient: kind "grad", or "delta" / "reset" for the EF21 family."""
        ...

    def sent(self) -> None:
        """The last prepared push is on the wire: state that mirrors the server's may move ahead of the verdict
        (while the server works on the push), and commit keeps or undoes it. Optional for a caller: commit
        alone gives the same state."""
        ...

    def commit(self, applied: bool) -> None:
        """The server's verdict on the last prepared push; state that mirrors the server's follows it."""
        ...

    def commit_parts(self, parts: list[tuple[int, int, bool]]) -> None:
        """The verdicts of server shards on the ranges [lo, hi) of the last prepared push (docs/design.md,
        Shards): state over each range follows its shard's verdict."""
        ...

    def resync(self) -> None:
        """The server's copy of the mirrored state may differ (a sequence error; a push answered by Stop, with no
        verdict): state moved by sent() goes back, and the next push starts over."""
        ...

    def mirror(self) -> torch.Tensor | None:
        """g_i, the vector the server keeps a copy of (the EF21 family); None for a method without one."""
        ...


def uniform(parts: list[tuple[int, int, bool]]) -> bool | None:
    """The one verdict of every shard, or None when the shards' verdicts differ."""
    verdicts = {applied for _, _, applied in parts}
    return verdicts.pop() if len(verdicts) == 1 else None


def add_payload(target: torch.Tensor, payload: Payload, scratch: torch.Tensor, alpha: float = 1.0) -> None:
    """target += alpha * decode(payload): the server's arithmetic, so both sides stay bitwise equal."""
    if payload.encoding == "sparse":
        idx, vals = decode_sparse(payload, payload.numel)
        target.index_add_(0, idx.to(target.device), vals.to(target.device), alpha=alpha)
    else:
        target.add_(decode_into(payload, payload.numel, scratch).to(target.device), alpha=alpha)


class DenseUplink:
    """method none: the dense minibatch gradient; it aliases `grad` (no copy)."""

    uplink = "grad"

    def __init__(self, numel: int, cfg: CompressionConfig | None = None):
        self.numel = numel
        self.value_dtype = cfg.values if cfg else "float32"

    def prepare(self, grad: torch.Tensor) -> tuple[str, Payload]:
        return "grad", encode_dense(grad, self.value_dtype)

    def sent(self) -> None:
        """Nothing mirrors the server."""

    def commit(self, applied: bool) -> None:
        """Nothing mirrors the server."""

    def commit_parts(self, parts: list[tuple[int, int, bool]]) -> None:
        """Nothing mirrors the server."""

    def resync(self) -> None:
        """Nothing to resynchronise."""

    def mirror(self) -> torch.Tensor | None:
        return None


class NaiveUplink(DenseUplink):
    """method naive: C(grad) with no memory of what was lost."""

    def __init__(self, numel: int, cfg: CompressionConfig, compressor: PayloadCompressor):
        super().__init__(numel, cfg)
        self.compressor = compressor

    def prepare(self, grad: torch.Tensor) -> tuple[str, Payload]:
        return "grad", self.compressor.compress(grad)


class EF14Uplink(DenseUplink):
    """method ef14: the residual e carries what compression dropped into the next push."""

    def __init__(self, numel: int, cfg: CompressionConfig, compressor: PayloadCompressor, device: torch.device):
        super().__init__(numel, cfg)
        self.compressor = compressor
        self.e = torch.zeros(numel, device=device)
        self._u = torch.zeros_like(self.e)
        self._sent = torch.zeros(numel)  # host scratch for decoding

    def prepare(self, grad: torch.Tensor) -> tuple[str, Payload]:
        torch.add(self.e, grad, out=self._u)
        self._payload = self.compressor.compress(self._u)
        return "grad", self._payload

    def commit(self, applied: bool) -> None:
        self.e.copy_(self._u)  # e = u - C(u); a refused push keeps all of u for next time
        if applied:
            add_payload(self.e, self._payload, self._sent, alpha=-1.0)

    def commit_parts(self, parts: list[tuple[int, int, bool]]) -> None:
        verdict = uniform(parts)
        if verdict is not None:
            return self.commit(verdict)
        self.e.copy_(self._u)  # only the ranges a shard applied lose what was sent of them
        sent = decode_into(self._payload, self.numel, self._sent).to(self.e.device)
        for lo, hi, applied in parts:
            if applied:
                self.e[lo:hi].sub_(sent[lo:hi])


class EF21Uplink:
    """ef21, ef21-sgdm and ef21-sgd2m: push c = C(target - g_i), keep g_i += c on both sides."""

    uplink = "ef21"

    def __init__(self, numel: int, cfg: CompressionConfig, compressor: PayloadCompressor, device: torch.device):
        self.numel = numel
        self.compressor = compressor
        self.eta = 1.0 if cfg.method == "ef21" else cfg.eta
        self.double = cfg.method == "ef21-sgd2m"
        self.g = torch.zeros(numel, device=device)  # g_i, mirrored by the server
        self.v = torch.zeros_like(self.g) if self.eta < 1 or self.double else None  # momentum v_i
        self.u = torch.zeros_like(self.g) if self.double else None  # second momentum u_i
        self._diff: torch.Tensor | None = None  # target - g_i, for a compressor without compress_difference
        self._sent = torch.zeros(numel)  # host scratch for decoding
        self._need_reset = True
        self._started = False
        self._pending: tuple[str, Payload] | None = None
        self._early: tuple[torch.Tensor, torch.Tensor] | None = None  # sent(): (indices, g_i's values before)

    def _target(self, grad: torch.Tensor) -> torch.Tensor:
        """What g_i chases: grad (EF21), the momentum v (EF21-SGDM) or the double momentum u (SGD2M)."""
        if self.v is None:
            return grad
        if not self._started:  # v^0 = u^0 = the first stochastic gradient
            self.v.copy_(grad)
            if self.u is not None:
                self.u.copy_(grad)
        else:
            self.v.mul_(1 - self.eta).add_(grad, alpha=self.eta)
            if self.u is not None:
                self.u.mul_(1 - self.eta).add_(self.v, alpha=self.eta)
        return self.u if self.u is not None else self.v

    def prepare(self, grad: torch.Tensor) -> tuple[str, Payload]:
        self._undo_early()  # a push sent without a verdict counts as not applied, as it always did
        target = self._target(grad)
        self._started = True
        if self._need_reset:  # exact float32, so both sides set g_i to the same vector
            self._pending = ("reset", encode_dense(target.detach().float().cpu().clone()))
        else:
            self._pending = ("delta", self._compress_difference(target))
        return self._pending

    def _compress_difference(self, target: torch.Tensor) -> Payload:
        """C(target - g_i): through the compressor's compress_difference when it has one (Top-K's skips
        writing the difference out, the same payload), else by writing it into a reused buffer."""
        fused = getattr(self.compressor, "compress_difference", None)
        if fused is not None:
            return fused(target, self.g)
        if self._diff is None:
            self._diff = torch.empty_like(self.g)
        return self.compressor.compress(torch.sub(target, self.g, out=self._diff))

    def sent(self) -> None:
        """A sparse delta on the wire: g_i += c now, the server's arithmetic on the decoded payload (bit for bit
        what commit(True) would add), keeping the k values it overwrites so a refusal puts them back exactly.
        The scatter into g_i then runs while the server works on the push, not after its reply. Any other
        push (a reset, a dense delta) waits for commit. Between sent() and the verdict, mirror() holds the
        sent push already."""
        if self._pending is None or self._early is not None:
            return
        kind, payload = self._pending
        if kind != "delta" or payload.encoding != "sparse":
            return
        idx, vals = decode_sparse(payload, payload.numel)
        idx, vals = idx.to(self.g.device), vals.to(self.g.device)
        self._early = (idx, self.g.index_select(0, idx))
        self.g.index_add_(0, idx, vals)

    def _undo_early(self, ranges: list[tuple[int, int]] | None = None) -> None:
        """Put back g_i's values that sent() overwrote: all of them, or those in the [lo, hi) `ranges`."""
        early, self._early = self._early, None
        if early is None:
            return
        idx, before = early
        if ranges is None:
            self.g.index_copy_(0, idx, before)
        for lo, hi in ranges or []:  # a loop over server shards, not parameters
            inside = (idx >= lo) & (idx < hi)
            self.g.index_copy_(0, idx[inside], before[inside])

    def commit(self, applied: bool) -> None:
        assert self._pending is not None
        kind, payload = self._pending
        self._pending = None
        if self._early is not None:  # sent() added the delta already: kept, or taken back
            if applied:
                self._early = None
            self._undo_early()
            return
        if not applied:
            return
        if kind == "reset":
            assert payload.values is not None  # a dense payload carries its values
            self.g.copy_(payload.values)
            self._need_reset = False
        else:
            add_payload(self.g, payload, self._sent)

    def commit_parts(self, parts: list[tuple[int, int, bool]]) -> None:
        """g_i over each range follows its shard; a reset some shard did not apply is sent again whole."""
        verdict = uniform(parts)
        if verdict is not None:
            return self.commit(verdict)
        assert self._pending is not None
        kind, payload = self._pending
        self._pending = None
        if self._early is not None:  # sent() added the delta already: the refused ranges take it back
            return self._undo_early([(lo, hi) for lo, hi, applied in parts if not applied])
        sent = payload.values if kind == "reset" else decode_into(payload, self.numel, self._sent)
        assert sent is not None  # a dense reset carries its values
        for lo, hi, applied in parts:
            if applied and kind == "reset":
                self.g[lo:hi].copy_(sent[lo:hi])
            elif applied:
                self.g[lo:hi].add_(sent[lo:hi].to(self.g.device))

    def resync(self) -> None:
        """After a sequence error the server's g_i may differ: the next push resets it densely."""
        self._undo_early()
        self._need_reset = True
        self._pending = None

    def mirror(self) -> torch.Tensor | None:
        return self.g


def make_uplink(
    cfg: CompressionConfig, numel: int, compressor: PayloadCompressor | None, device: torch.device
) -> Uplink:
    """The uplink of compression.method; every method but none compresses, with `compressor`."""
    if cfg.method == "none":
        return DenseUplink(numel, cfg)
    assert compressor is not None, f"compression.method {cfg.method} needs a compressor"
    if cfg.method == "naive":
        return NaiveUplink(numel, cfg, compressor)
    if cfg.method == "ef14":
        return EF14Uplink(numel, cfg, compressor, device)
    return EF21Uplink(numel, cfg, compressor, device)
