"""Message faults on purpose (like ps-lite's PS_DROP_MSG): drop, duplicate, delay and reorder sends, each
with its own probability, from a seeded generator, so a run can be driven through a lossy network and
checked to come out right (the server never applies a push twice; EF21's mirror of g_i stays in lock-step).

A message to drop is not sent; one to duplicate is sent twice; one to delay is sent `delay_s` later; one
to reorder is held back and sent right after the next message. Held and delayed messages are copies, so
the sender may reuse its buffers at once. Due messages go out whenever the channel is used (send, poll).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotation only: the wire layer does not import the config at run time
    from protocol.config.schema import ExperimentConfig


@dataclass
class FaultInjector:
    drop: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.0
    reorder: float = 0.0
    delay_s: float = 0.05
    seed: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {"drop": 0, "duplicate": 0, "delay": 0, "reorder": 0})
    _rng: random.Random = field(init=False, repr=False)
    _delayed: list[tuple[float, list[bytes]]] = field(default_factory=list, repr=False)
    _held: list[list[bytes]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @property
    def active(self) -> bool:
        return max(self.drop, self.duplicate, self.delay, self.reorder) > 0

    def route(self, frames: list[bytes]) -> list[list[bytes]]:
        """The messages to send now for this one (none, it, it twice, or it and one held back before)."""
        u = self._rng.random()
        for kind, p in (("drop", self.drop), ("duplicate", self.duplicate), ("delay", self.delay)):
            if u < p:
                self.counts[kind] += 1
                return self._apply(kind, frames)
            u -= p
        if u < self.reorder and not self._held:
            self.counts["reorder"] += 1
            self._held.append(frames)
            return []
        out, self._held = [frames, *self._held], []
        return out

    def _apply(self, kind: str, frames: list[bytes]) -> list[list[bytes]]:
        if kind == "drop":
            return []
        if kind == "duplicate":
            return [frames, frames]
        self._delayed.append((time.monotonic() + self.delay_s, frames))
        return []

    def due(self) -> list[list[bytes]]:
        """Delayed messages whose time has come (and none of the others)."""
        now = time.monotonic()
        ready = [f for at, f in self._delayed if at <= now]
        self._delayed = [(at, f) for at, f in self._delayed if at > now]
        return ready


def injector(cfg: ExperimentConfig, who: int) -> FaultInjector | None:
    """The faults of a config's `faults` section for one process (`who`: a rank, -1 for the server), None
    when they are all off. Each process draws its own stream."""
    f = cfg.faults
    inj = FaultInjector(f.drop, f.duplicate, f.delay, f.reorder, f.delay_s, f.seed + 1000 + who)
    return inj if inj.active else None
