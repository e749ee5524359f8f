"""Compressed downlink (docs/design.md, Compressed downlink): a reply carries the Top-K of the difference between
the parameters and the worker's copy of them, and the server keeps that copy, as EF21-P does (Gruntkowska,
Tyurin, Richtarik 2023, "EF21-P and Friends", eq. 6: w_{t+1} = w_t + C(x_{t+1} - w_t)). Pure math: no sockets,
clocks or logging.

Per rank the server keeps w_i, the worker's copy (float32, the shard's numel), under a copy id. A reply either
resets the copy (the parameters themselves, a new id) or carries c = TopK(x - w_i) (indices int64 ascending,
values float32: the same bits as (x - w_i)[indices]) with the new id and the id it applies to. The worker adds
c to its copy, index by index in float32, exactly as the server adds it to w_i, so the two copies stay equal
bit for bit; what the worker has not been sent, x - w_i, is the error the next reply's Top-K works on.

The server adds c to w_i only once the worker's next push names the new id: a reply that was lost, or that the
worker passed over (an answer to a push it had resent), leaves w_i as the worker has it. A push naming an id the
server cannot account for (-1: no copy; a restart; two answers to one resent push) gets a reset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from protocol import sparsify

GAP_EVERY = 16  # the gap ||x - w_i|| / ||x|| is measured on every this many deltas (two passes over x each)


@dataclass(frozen=True)
class Answer:
    """What a reply tells a worker about its copy. indices is None: a reset (send the parameters themselves)."""

    copy_id: int
    copy_base: int = -1  # the id the delta applies to (-1 for a reset)
    indices: torch.Tensor | None = None
    values: torch.Tensor | None = None


@dataclass
class _Copy:
    w: torch.Tensor  # the worker's copy as of `committed` (a reset's parameters, until that id is named)
    committed: int = -1  # the id the worker holds w under (-1: a reset not yet acknowledged)
    pending: Answer | None = None  # the last answer sent, until the worker's next push names it or not


class Downlink:
    """The workers' copies of one server's (one shard's) parameters, and the answers that keep them in step.

    numel: the parameters' length; ratio: the share of coordinates a delta carries, k = max(1, floor(ratio *
    numel)); seed: the sampled-threshold search's random stream (the result does not depend on it)."""

    def __init__(self, numel: int, ratio: float, seed: int = 0):
        self.numel = numel
        self.k = sparsify.count_kept(ratio, 0, numel)
        self._copies: dict[int, _Copy] = {}
        self._next_id = 0
        self._gen = torch.Generator().manual_seed(seed)
        self._blocks = sparsify.DifferenceScratch()
        self._full: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # _scratch's buffers
        self.resets = 0
        self.deltas = 0
        self.gap_max = 0.0  # the largest ||x - w_i|| / ||x|| a measured delta left (0 before any delta)

    def answer(self, rank: int, named: int, params: torch.Tensor) -> Answer:
        """The answer for a reply to `rank`, whose push named copy id `named`, with parameters `params`
        (float32, (numel,), CPU). Settles the previous answer first: committed when `named` is its id."""
        copy = self._settle(rank, named)
        if copy is None or self.k >= self.numel:  # a copy _settle returns is one the worker holds
            return self._reset(rank, params, copy)
        indices, values = self._select(params, copy.w)
        copy.pending = Answer(self._new_id(), copy.committed, indices, values)
        if self.deltas % GAP_EVERY == 0:
            self.gap_max = max(self.gap_max, _gap(params, copy.w, values))
        self.deltas += 1
        return copy.pending

    def forget(self, rank: int) -> None:
        """The rank left (or joined again, or pulled the parameters whole): its copy is no longer known."""
        self._copies.pop(rank, None)

    def _settle(self, rank: int, named: int) -> _Copy | None:
        copy = self._copies.get(rank)
        if copy is None:
            return None
        sent, copy.pending = copy.pending, None
        if sent is not None and named == sent.copy_id >= 0:
            if sent.indices is not None:
                assert sent.values is not None
                copy.w.index_add_(0, sent.indices, sent.values)  # as the worker did: float32, index by index
            copy.committed = sent.copy_id
            return copy
        if named == copy.committed >= 0:
            return copy  # the last answer did not reach the worker (or was passed over): w_i is still its copy
        self._copies.pop(rank)
        return None

    def _reset(self, rank: int, params: torch.Tensor, copy: _Copy | None) -> Answer:
        if copy is None:
            copy = self._copies[rank] = _Copy(torch.empty(self.numel, dtype=torch.float32))
        copy.w.copy_(params)
        copy.committed, copy.pending = -1, Answer(self._new_id())
        self.resets += 1
        return copy.pending

    def _select(self, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, values) of TopK(x - w), from one blocked pass over x and w where it applies."""
        return sparsify.select_difference(x, w, self.k, self._gen, self._blocks, self._scratch)

    def _scratch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x - w, |x - w| and a mask, for when the blocked pass does not apply: made the first time."""
        if self._full is None:
            n = self.numel
            self._full = (torch.empty(n), torch.empty(n), torch.empty(n, dtype=torch.bool))
        return self._full

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id


def _gap(x: torch.Tensor, w: torch.Tensor, values: torch.Tensor) -> float:
    """||x - w - c|| / ||x|| for the delta c = (x - w) on its support: ||x - w||^2 - ||c||^2 under the root."""
    left = float(torch.linalg.vector_norm(x - w)) ** 2 - float(torch.linalg.vector_norm(values)) ** 2
    return max(left, 0.0) ** 0.5 / max(float(torch.linalg.vector_norm(x)), 1e-30)
