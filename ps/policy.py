"""Staleness policy: what the server does with a push of staleness tau. Pure rules, no I/O.

Learning-rate rules (docs/algorithms.md, Learning-rate rules), from each push's tau or the running mean of recent taus:
    constant   lr0
    inverse    lr0 / max(1, tau)                          (Zhang et al. 2016)
    stability  lr0 * sin(pi / (2 (2 tau + 1)))            (At Stability's Edge: the delayed-SGD stability
                                                           bound; lr0 at tau = 0, ~0.785 lr0 / tau for large tau)
Bound: pushes with tau > max_staleness are dropped (the worker continues from fresh parameters), or
down-weighted: lr *= max_staleness / tau.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from protocol.config.schema import StalenessConfig


@dataclass(frozen=True)
class Decision:
    accept: bool
    lr: float
    reason: str = "ok"


def lr_scale(rule: str, tau: float) -> float:
    if rule == "constant":
        return 1.0
    if rule == "inverse":
        return 1.0 / max(1.0, tau)
    if rule == "stability":
        return math.sin(math.pi / (2 * (2 * max(0.0, tau) + 1)))
    raise ValueError(f"unknown lr rule {rule!r}")


def stable_lr_threshold(tau: float, curvature: float = 1.0) -> float:
    """The largest stable lr of SGD with constant delay tau on curvature lambda: 2 sin(pi/(2(2tau+1)))/lambda."""
    return 2 * math.sin(math.pi / (2 * (2 * tau + 1))) / curvature


class StalenessPolicy:
    def __init__(self, base_lr: float, cfg: StalenessConfig | None = None):
        self.base_lr = base_lr
        self.cfg = cfg or StalenessConfig()
        self._recent: deque[int] = deque(maxlen=self.cfg.mean_window)
        self.dropped = 0

    def decide(self, tau: int) -> Decision:
        cfg = self.cfg
        self._recent.append(tau)
        scale = 1.0
        bound = cfg.max_staleness
        if bound is not None and tau > bound:
            if cfg.over_bound == "drop":
                self.dropped += 1
                return Decision(False, 0.0, "stale")
            scale = bound / tau
        basis = sum(self._recent) / len(self._recent) if cfg.lr_from == "mean" else tau
        return Decision(True, self.base_lr * scale * lr_scale(cfg.lr_rule, basis))
