"""Artificial delay (APAM's artificial-delay study, docs/algorithms.md, Artificial delay): the server keeps its
last D parameter
versions and answers a worker with one of them, so the worker's next gradient is computed on parameters
tau versions old while the step is applied to the newest. Pure tensors and a seeded generator, no I/O.

uniform   a version drawn uniformly from those stored: tau ~ U{0..D-1} (fewer during the first D steps)
constant  the oldest stored version: tau = D-1 once D versions exist
"""

from __future__ import annotations

import random

import torch


class ParamHistory:
    def __init__(self, numel: int, versions: int, mode: str, seed: int):
        self.depth = versions
        self.mode = mode
        self._ring = torch.empty(versions, numel, dtype=torch.float32)
        self._version = [-1] * versions
        self._rng = random.Random(seed)

    @staticmethod
    def memory_mb(numel: int, versions: int) -> float:
        return versions * numel * 4 / 2**20

    def record(self, version: int, params: torch.Tensor) -> None:
        slot = version % self.depth
        self._ring[slot].copy_(params)
        self._version[slot] = version

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The stored versions and the generator's state (a checkpoint restores the same draws)."""
        version, internal, gauss = self._rng.getstate()
        return {"ring": self._ring}, {"versions": list(self._version), "rng": [version, list(internal), gauss]}

    def load_state(self, tensors: dict[str, torch.Tensor], facts: dict) -> None:
        self._ring.copy_(tensors["ring"])
        self._version = [int(v) for v in facts["versions"]]
        version, internal, gauss = facts["rng"]
        self._rng.setstate((version, tuple(internal), gauss))

    def pick(self, current: int) -> tuple[int, torch.Tensor]:
        """(version, parameters) to answer with, among the stored versions current-D+1 .. current."""
        oldest = max(0, current - self.depth + 1)
        version = oldest if self.mode == "constant" else self._rng.randint(oldest, current)
        slot = version % self.depth
        assert self._version[slot] == version, "every version of the window is stored"
        return version, self._ring[slot]
