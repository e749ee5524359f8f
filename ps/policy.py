"""Staleness policy: what the server does with a push of staleness tau. Pure rules, no I/O."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    accept: bool
    lr: float
    reason: str = "ok"


class StalenessPolicy:
    """Constant learning rate; every push is applied whatever its staleness."""

    def __init__(self, base_lr: float):
        self.base_lr = base_lr

    def decide(self, tau: int) -> Decision:
        return Decision(True, self.base_lr)
